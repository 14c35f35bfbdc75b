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

/// Mints a CA, a certificate per member (`(name, ip)`) and a client certificate into
/// `dir` (which must exist).
pub fn mint(dir: &Path, members: &[(String, Ipv4Addr)]) -> Result<LabCerts> {
    let ca_key = KeyPair::generate().context("generating the lab CA key")?;
    let mut ca_params = params("chaos-ebpf lab CA")?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages =
        vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
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

    let leaf = |common_name: &str, sans: Vec<SanType>, ekus: Vec<ExtendedKeyUsagePurpose>, files: &CertFiles| {
        let key = KeyPair::generate().with_context(|| format!("generating the key of {common_name}"))?;
        let mut params = params(common_name)?;
        params.subject_alt_names = sans;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = ekus;
        params.use_authority_key_identifier_extension = true;
        let cert =
            params.signed_by(&key, &issuer).with_context(|| format!("signing the certificate of {common_name}"))?;
        write_file(&files.key, &key.serialize_pem(), 0o600)?;
        write_file(&files.cert, &cert.pem(), 0o644)
    };
    for ((name, ip), files) in members.iter().zip(&certs.members) {
        let dns = name.as_str().try_into().with_context(|| format!("member name {name} as a DNS name"))?;
        leaf(
            name,
            vec![SanType::IpAddress(IpAddr::V4(*ip)), SanType::DnsName(dns)],
            // Members are servers to clients and to their peers, and clients of their peers.
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth],
            files,
        )?;
    }
    leaf("chaos-ebpf lab client", Vec::new(), vec![ExtendedKeyUsagePurpose::ClientAuth], &certs.client)?;
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
}
