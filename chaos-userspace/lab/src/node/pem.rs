//! The PEM files the node's flags name (--cacert, --cert, --quic-cert): read, with errors
//! that name the flag, the file and what it should hold.

use std::path::Path;

use rustls::RootCertStore;
use rustls_pki_types::{pem::PemObject, CertificateDer};

/// The certificates in the PEM file `path` given as `flag`, at least one; `what` says
/// what the file should hold ("the client certificate").
pub fn certificates(flag: &str, path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let bad = |e: &dyn std::fmt::Display| format!("{flag} {}: {e}; give the PEM file of {what}", path.display());
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(&e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(&e))?;
    if certs.is_empty() {
        return Err(format!("{flag} {}: no PEM certificate in the file", path.display()));
    }
    Ok(certs)
}

/// The CA certificates of `--cacert FILE` as trust roots; `signed` names what the CA
/// signed ("etcd's certificate").
pub fn ca_roots(path: &Path, signed: &str) -> Result<RootCertStore, String> {
    let what = format!("the CA that signed {signed}");
    let mut roots = RootCertStore::empty();
    for cert in certificates("--cacert", path, &what)? {
        roots.add(cert).map_err(|e| format!("--cacert {}: {e}; give the PEM file of {what}", path.display()))?;
    }
    Ok(roots)
}
