//! The one rtnetlink request aya does not offer: deleting the clsact qdisc that the
//! legacy (pre-TCX) attach path had to add. Without it a clean exit would leave a qdisc
//! behind (field notes: peers leave tc state after they exit).

use std::io;

const NETLINK_ROUTE: i32 = 0;
const RTM_DELQDISC: u16 = 37;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLMSG_ERROR: u16 = 0x2;
const TCA_KIND: u16 = 1;
/// TC_H_CLSACT == TC_H_INGRESS: parent ffff:fff1, handle ffff:0000.
const TC_H_CLSACT: u32 = 0xffff_fff1;
const CLSACT_HANDLE: u32 = 0xffff_0000;

/// Deletes the clsact qdisc of `ifindex` in the calling thread's network namespace.
/// `Ok(false)` when there was none.
pub fn delete_clsact(ifindex: u32) -> io::Result<bool> {
    let kind = b"clsact\0";
    let attr_len = 4 + kind.len();
    let attr_padded = (attr_len + 3) & !3;
    let total = 16 + 20 + attr_padded;
    let mut msg = Vec::with_capacity(total);
    // nlmsghdr
    msg.extend_from_slice(&(total as u32).to_ne_bytes());
    msg.extend_from_slice(&RTM_DELQDISC.to_ne_bytes());
    msg.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes()); // seq
    msg.extend_from_slice(&0u32.to_ne_bytes()); // pid
                                                // tcmsg
    msg.extend_from_slice(&[libc::AF_UNSPEC as u8, 0, 0, 0]);
    msg.extend_from_slice(&(ifindex as i32).to_ne_bytes());
    msg.extend_from_slice(&CLSACT_HANDLE.to_ne_bytes());
    msg.extend_from_slice(&TC_H_CLSACT.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes());
    // TCA_KIND
    msg.extend_from_slice(&(attr_len as u16).to_ne_bytes());
    msg.extend_from_slice(&TCA_KIND.to_ne_bytes());
    msg.extend_from_slice(kind);
    msg.resize(total, 0);

    // SAFETY: plain socket calls with buffers that outlive them.
    unsafe {
        let fd = libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, NETLINK_ROUTE);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let result = (|| {
            if libc::send(fd, msg.as_ptr().cast(), msg.len(), 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            let mut buf = [0u8; 4096];
            let n = libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0);
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            if (n as usize) < 20 || u16::from_ne_bytes([buf[4], buf[5]]) != NLMSG_ERROR {
                return Err(io::Error::other("unexpected netlink reply to RTM_DELQDISC"));
            }
            match -i32::from_ne_bytes([buf[16], buf[17], buf[18], buf[19]]) {
                0 => Ok(true),
                libc::ENOENT | libc::EINVAL => Ok(false),
                errno => Err(io::Error::from_raw_os_error(errno)),
            }
        })();
        libc::close(fd);
        result
    }
}
