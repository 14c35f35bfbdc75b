//! Loss: the measured loss rate matches the probability, the kernel drops exactly the
//! packets the shared hash predicts (the same seed drops the same packets, another seed
//! others), and burst loss follows the Gilbert-Elliott model in rate and burst length.

use std::time::Duration;

use crate::support::*;

pub const TESTS: &[Test] = tests![
    loss_matches_probability,
    decisions_are_deterministic,
    burst_loss_matches_gilbert_elliott,
];

/// Loss accuracy: for each p, at least 20,000 packets, measured loss within 4 binomial
/// standard deviations.
fn loss_matches_probability() {
    require_root();
    let pair = Pair::new("loss");
    let receiver = udp_receiver(&pair.b, sock(ADDR_B, 5002));
    let n = 20_000u32;
    for (i, p) in [0.01, 0.1, 0.3, 0.5].into_iter().enumerate() {
        let target = pair.target();
        let chaos = Chaos::start(&[
            "inject",
            "loss",
            "--target",
            &target,
            "--probability",
            &p.to_string(),
            "--direction",
            "egress",
            "--duration",
            "5m",
            "--seed",
            &(100 + i).to_string(),
        ]);
        let got = udp_run(&pair.a, sock(ADDR_A, 5001), &receiver, sock(ADDR_B, 5002), n);
        let (code, out, err) = chaos.interrupt();
        assert_eq!(code, 1, "SIGINT ends a run as interrupted (exit 1): {err}");
        assert!(out.contains("nothing left attached"), "{out}");
        let lost = (n as usize - got.len()) as f64;
        let sigma = (n as f64 * p * (1.0 - p)).sqrt();
        let measured = lost / n as f64;
        println!("loss p={p}: measured {measured:.4} over {n} packets ({} sigma)", (lost - n as f64 * p) / sigma);
        assert!(
            (lost - n as f64 * p).abs() <= 4.0 * sigma,
            "p={p}: lost {lost} of {n}, expected {} +- {:.1}",
            n as f64 * p,
            4.0 * sigma
        );
        assert_nothing_left();
    }
}

/// Runs of consecutive sequence numbers in a sorted list: the lengths of the bursts.
fn burst_lengths(lost: &[u32]) -> Vec<u32> {
    let mut lengths: Vec<u32> = Vec::new();
    for (k, seq) in lost.iter().enumerate() {
        if k > 0 && lost[k - 1] + 1 == *seq {
            *lengths.last_mut().expect("a run is open") += 1;
        } else {
            lengths.push(1);
        }
    }
    lengths
}

/// Burst loss (Gilbert-Elliott: enter 0.05, exit 0.25, loss 1 in the bad state, 0 in
/// the good one) on 20,000 UDP datagrams of one flow: the kernel drops exactly the
/// packets the model predicts from the shared hash, and the drops have the model's
/// stationary loss and mean burst length.
///
/// Tolerances (4 sigma). The bad-state occupancy of a two-state Markov chain with
/// second eigenvalue r = 1 - enter - exit has, over n packets, variance
/// n pi (1 - pi) (1 + r) / (1 - r) with pi = enter / (enter + exit) (the lag-k
/// autocorrelation is r^k); here 0.79 n, sd 0.0063 on the loss rate at n = 20,000.
/// Starting in the good state instead of the stationary one shifts the expected count
/// by pi / (1 - r) = 0.56 packets, far inside that. A burst (a stay in the bad state)
/// lasts Geometric(exit) packets: mean 1 / exit, variance (1 - exit) / exit^2, and the
/// stays are independent, so over B bursts the mean has sd sqrt((1 - exit) / exit^2 / B).
/// The last burst may be cut short by the end of the sample: it is left out.
fn burst_loss_matches_gilbert_elliott() {
    require_root();
    let pair = Pair::new("burst");
    let receiver = udp_receiver(&pair.b, sock(ADDR_B, 5002));
    let (enter, exit, seed, n) = (0.05, 0.25, 11u64, 20_000u32);
    let target = pair.target();
    let chaos = Chaos::start(&[
        "inject",
        "loss",
        "--target",
        &target,
        "--probability",
        "0",
        "--burst-enter",
        &enter.to_string(),
        "--burst-exit",
        &exit.to_string(),
        "--burst-loss",
        "1",
        "--direction",
        "egress",
        "--duration",
        "5m",
        "--seed",
        &seed.to_string(),
    ]);
    let got = udp_run(&pair.a, sock(ADDR_A, 5001), &receiver, sock(ADDR_B, 5002), n);
    let (code, out, err) = chaos.interrupt();
    assert_eq!(code, 1, "SIGINT ends a run as interrupted (exit 1): {err}");
    assert!(out.contains("nothing left attached"), "{out}");
    assert_nothing_left();
    let lost: Vec<u32> = (0..n).filter(|s| !got.contains(s)).collect();

    let nf = n as f64;
    let pi = enter / (enter + exit);
    let r = 1.0 - enter - exit;
    let sigma_rate = (pi * (1.0 - pi) * (1.0 + r) / (1.0 - r) / nf).sqrt();
    let rate = lost.len() as f64 / nf;
    let mut bursts = burst_lengths(&lost);
    if lost.last() == Some(&(n - 1)) {
        bursts.pop();
    }
    let b = bursts.len() as f64;
    let mean_burst = bursts.iter().map(|&l| l as f64).sum::<f64>() / b.max(1.0);
    let sigma_burst = ((1.0 - exit) / (exit * exit) / b.max(1.0)).sqrt();
    println!(
        "burst loss: lost {} of {n} ({rate:.4}, model {pi:.4} +- {:.4} at 4 sigma), {} bursts, mean length \
         {mean_burst:.3} (model {:.3} +- {:.3})",
        lost.len(),
        4.0 * sigma_rate,
        bursts.len(),
        1.0 / exit,
        4.0 * sigma_burst
    );
    println!(
        "REPORT|burst_loss|rate={rate:.4}|model_rate={pi:.4}|mean_burst={mean_burst:.3}|model_burst={:.3}",
        1.0 / exit
    );
    assert_eq!(
        lost,
        predicted_burst_drops(seed, 0.0, enter, exit, 1.0, n),
        "the kernel's burst drops differ from the Gilbert-Elliott model on the shared hash"
    );
    assert!((rate - pi).abs() <= 4.0 * sigma_rate, "loss rate {rate:.4}, model {pi:.4} +- {:.4}", 4.0 * sigma_rate);
    assert!(bursts.len() >= 100, "only {} bursts", bursts.len());
    assert!(
        (mean_burst - 1.0 / exit).abs() <= 4.0 * sigma_burst,
        "mean burst {mean_burst:.3}, model {:.3} +- {:.3}",
        1.0 / exit,
        4.0 * sigma_burst
    );
}

/// Same seed and traffic: the same packets dropped, and exactly the ones the shared
/// hash predicts; another seed: other packets.
fn decisions_are_deterministic() {
    require_root();
    let pair = Pair::new("det");
    let receiver = udp_receiver(&pair.b, sock(ADDR_B, 5002));
    let count = 3000;
    let run = |seed: u64| {
        let target = pair.target();
        let chaos = Chaos::start(&[
            "inject",
            "loss",
            "--target",
            &target,
            "--probability",
            "0.3",
            "--direction",
            "egress",
            "--duration",
            "5m",
            "--seed",
            &seed.to_string(),
        ]);
        let got = udp_run(&pair.a, sock(ADDR_A, 5001), &receiver, sock(ADDR_B, 5002), count);
        chaos.signal(libc::SIGTERM);
        let (code, _, err) = chaos.finish(Duration::from_secs(10));
        assert_eq!(code, 1, "{err}");
        assert_nothing_left();
        (0..count).filter(|s| !got.contains(s)).collect::<Vec<u32>>()
    };
    let first = run(7);
    let second = run(7);
    let other = run(8);
    assert_eq!(first, second, "the same seed dropped different packets");
    assert_ne!(first, other, "another seed dropped the same packets");
    assert_eq!(first, predicted_drops(7, 0.3, count), "kernel decisions differ from the shared hash");
    assert_eq!(other, predicted_drops(8, 0.3, count));
    println!(
        "seed 7 dropped {} of {count}, seed 8 dropped {}; {} in common",
        first.len(),
        other.len(),
        first.iter().filter(|s| other.contains(s)).count()
    );
}
