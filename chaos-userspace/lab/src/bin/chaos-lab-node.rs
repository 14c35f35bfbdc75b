//! chaos-lab-node: the lab's workload, a node of a discovery plane on etcd
//! (chaos_lab::node; docs/workload.md).

fn main() -> std::process::ExitCode {
    chaos_lab::node::main(std::env::args().skip(1).collect())
}
