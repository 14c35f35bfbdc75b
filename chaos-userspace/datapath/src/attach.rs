//! How the classifiers are hooked into TC, and how that is chosen.

use anyhow::Result;
use aya::util::KernelVersion;
use serde::{Deserialize, Serialize};

use crate::error::Error;

/// How the classifiers are hooked into TC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    /// TCX when the kernel has it (>= 6.6), netlink otherwise.
    Auto,
    /// bpf_link based TCX: links vanish with the process, so a crash reverts at once.
    Tcx,
    /// Legacy clsact + cls_bpf filters (kernels < 6.6): removed explicitly on exit, by the
    /// lease after a crash, and by `cleanup`.
    Netlink,
}

impl AttachMode {
    pub fn resolve(self) -> Result<AttachMode> {
        let tcx_ok = KernelVersion::current().map(|v| v >= KernelVersion::new(6, 6, 0)).unwrap_or(false);
        match self {
            AttachMode::Auto if tcx_ok => Ok(AttachMode::Tcx),
            AttachMode::Auto => Ok(AttachMode::Netlink),
            AttachMode::Tcx if !tcx_ok => Err(Error::unsupported(
                "TCX attachment needs Linux 6.6 or newer; this kernel is older",
                "use --attach netlink (or auto, which falls back to netlink by itself)",
            )
            .into()),
            other => Ok(other),
        }
    }
}
