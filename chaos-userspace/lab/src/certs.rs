//! The cluster lab's certificates: a CA minted on every `lab up` (new keys each time),
//! one certificate per etcd member (server and client use, since members are each
//! other's peers; SANs = the member's IP and name) and one client certificate for the
//! CLI and Prometheus. ECDSA P-256 keys, PEM files; keys are 0600 inside the lab's
//! 0700 state directory, and the CA key never leaves it.

use std::{
    fs,
    io::Write,
    net::{IpAddr, Ipv4Addr},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// How long the lab's certificates are valid: long enough for any lab session, short
/// enough that a forgotten key is worth nothing for long.
const VALIDITY_DAYS: i64 = 30;

/// Paths of one certificate and its key.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// What `mint` wrote.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LabCerts {
    /// The CA certificate every party trusts.
    pub ca: PathBuf,
    /// The CA's key (for later actions that mint certificates, such as an expired one).
    pub ca_key: PathBuf,
    /// The client certificate of the CLI, etcdctl and Prometheus.
    pub client: CertFiles,
    /// One per member, in member order.
    pub members: Vec<CertFiles>,
}

fn params(common_name: &str) -> Result<CertificateParams> {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "chaos-ebpf lab");
    name.push(DnType::CommonName, common_name);
    params.distinguished_name = name;
    let now = time::OffsetDateTime::now_utc();
    // An hour back: a member whose clock is a little behind still accepts it.
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(VALIDITY_DAYS);
    Ok(params)
}

/// Writes `text` to a new file with `mode` (created with it, never wider for a moment).
fn write_file(path: &Path, text: &str, mode: u32) -> Result<()> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(text.as_bytes()).with_context(|| format!("writing {}", path.display()))
}

/// The CA's parameters: the same on every call (but the validity), so that an issuer
/// rebuilt from them and the stored CA key signs certificates that chain to `ca.pem`.
fn ca_params() -> Result<CertificateParams> {
    let mut ca_params = params("chaos-ebpf lab CA")?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages =
        vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    Ok(ca_params)
}

/// A member's SANs (its IP and name) and uses: members are servers to clients and to
/// their peers, and clients of their peers.
fn member_params(name: &str, ip: Ipv4Addr) -> Result<CertificateParams> {
    let dns = name.try_into().with_context(|| format!("member name {name} as a DNS name"))?;
    let mut params = params(name)?;
    params.subject_alt_names = vec![SanType::IpAddress(IpAddr::V4(ip)), SanType::DnsName(dns)];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

/// A new certificate (and key) for member `name` at `ip`, signed by the lab's CA (read
/// from `certs.ca_key`), valid from `not_before` to `not_after`: for the cert-expiry
/// action, an interval already over, or one ending in a few seconds. Written to `files`
/// through a temporary file and a rename each, so a reader sees the old or the new file.
pub fn mint_member(
    certs: &LabCerts,
    name: &str,
    ip: Ipv4Addr,
    not_before: time::OffsetDateTime,
    not_after: time::OffsetDateTime,
    files: &CertFiles,
) -> Result<()> {
    let ca_pem = fs::read_to_string(&certs.ca_key).with_context(|| format!("reading {}", certs.ca_key.display()))?;
    let ca_key = KeyPair::from_pem(&ca_pem).with_context(|| format!("reading {}", certs.ca_key.display()))?;
    let issuer = Issuer::new(ca_params()?, ca_key);
    let key = KeyPair::generate().with_context(|| format!("generating a key for {name}"))?;
    let mut params = member_params(name, ip)?;
    params.not_before = not_before;
    params.not_after = not_after;
    let cert = params.signed_by(&key, &issuer).with_context(|| format!("signing a certificate of {name}"))?;
    for (path, text, mode) in [(&files.key, key.serialize_pem(), 0o600), (&files.cert, cert.pem(), 0o644)] {
        let tmp = path.with_extension("pem.tmp");
        write_file(&tmp, &text, mode)?;
        fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Mints a CA, a certificate per member (`(name, ip)`) and a client certificate into
/// `dir` (which must exist).
pub fn mint(dir: &Path, members: &[(String, Ipv4Addr)]) -> Result<LabCerts> {
    let ca_key = KeyPair::generate().context("generating the lab CA key")?;
    let ca_params = ca_params()?;
    let ca_cert = ca_params.self_signed(&ca_key).context("signing the lab CA")?;
    let certs = LabCerts {
        ca: dir.join("ca.pem"),
        ca_key: dir.join("ca-key.pem"),
        client: CertFiles { cert: dir.join("client.pem"), key: dir.join("client-key.pem") },
        members: members
            .iter()
            .map(|(name, _)| CertFiles {
                cert: dir.join(format!("{name}.pem")),
                key: dir.join(format!("{name}-key.pem")),
            })
            .collect(),
    };
    write_file(&certs.ca_key, &ca_key.serialize_pem(), 0o600)?;
    write_file(&certs.ca, &ca_cert.pem(), 0o644)?;
    let issuer = Issuer::new(ca_params, ca_key);

    let leaf = |common_name: &str, params: CertificateParams, files: &CertFiles| {
        let key = KeyPair::generate().with_context(|| format!("generating the key of {common_name}"))?;
        let cert =
            params.signed_by(&key, &issuer).with_context(|| format!("signing the certificate of {common_name}"))?;
        write_file(&files.key, &key.serialize_pem(), 0o600)?;
        write_file(&files.cert, &cert.pem(), 0o644)
    };
    for ((name, ip), files) in members.iter().zip(&certs.members) {
        leaf(name, member_params(name, *ip)?, files)?;
    }
    let client_name = "chaos-ebpf lab client";
    let mut client = params(client_name)?;
    client.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    client.use_authority_key_identifier_extension = true;
    leaf(client_name, client, &certs.client)?;
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn mints_fresh_keys_with_private_modes() {
        let dir = std::env::temp_dir().join(format!("chaos-certs-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let members = vec![("n1".to_owned(), Ipv4Addr::new(198, 51, 100, 1))];
        let first = mint(&dir, &members).unwrap();
        let ca_first = fs::read_to_string(&first.ca).unwrap();
        let key_first = fs::read_to_string(&first.members[0].key).unwrap();
        assert!(ca_first.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(key_first.contains("PRIVATE KEY"));
        for key in [&first.ca_key, &first.members[0].key, &first.client.key] {
            assert_eq!(fs::metadata(key).unwrap().permissions().mode() & 0o777, 0o600, "{}", key.display());
        }
        let second = mint(&dir, &members).unwrap();
        assert_ne!(fs::read_to_string(&second.ca).unwrap(), ca_first, "a new CA on every mint");
        assert_ne!(fs::read_to_string(&second.members[0].key).unwrap(), key_first);
        fs::remove_dir_all(&dir).unwrap();
    }

    /// `openssl verify` of `cert` against `ca`: its output (the verdict and the error).
    fn openssl_verify(ca: &Path, cert: &Path) -> Option<String> {
        let out = std::process::Command::new("openssl").arg("verify").arg("-CAfile").arg(ca).arg(cert).output().ok()?;
        Some(format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
    }

    #[test]
    fn a_member_certificate_minted_later_chains_to_the_lab_ca() {
        let dir = std::env::temp_dir().join(format!("chaos-certs-expired-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let ip = Ipv4Addr::new(198, 51, 100, 1);
        let certs = mint(&dir, &[("n1".to_owned(), ip)]).unwrap();
        let now = time::OffsetDateTime::now_utc();
        let expired = CertFiles { cert: dir.join("expired.pem"), key: dir.join("expired-key.pem") };
        mint_member(&certs, "n1", ip, now - time::Duration::days(2), now - time::Duration::days(1), &expired).unwrap();
        let fresh = CertFiles { cert: dir.join("fresh.pem"), key: dir.join("fresh-key.pem") };
        mint_member(&certs, "n1", ip, now - time::Duration::hours(1), now + time::Duration::hours(1), &fresh).unwrap();
        assert_eq!(fs::metadata(&expired.key).unwrap().permissions().mode() & 0o777, 0o600);
        // openssl (Debian's, present where the lab runs) checks the chain and the dates.
        if let (Some(expired), Some(fresh)) =
            (openssl_verify(&certs.ca, &expired.cert), openssl_verify(&certs.ca, &fresh.cert))
        {
            assert!(expired.contains("certificate has expired"), "{expired}");
            assert!(fresh.trim_end().ends_with(": OK"), "{fresh}");
        }
        fs::remove_dir_all(&dir).unwrap();
    }
}
