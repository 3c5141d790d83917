//! TUN interfaces: the kernel's view of a tunnel (a route-based VPN's tunnel interface), so
//! that the kernel, ping, tcpdump and a routing daemon can use a tunnel's inside address.
//! [`Tun::create`] makes a TUN device (no packet-information header), gives it an IPv4
//! address and prefix and an MTU, and brings it up; [`Tun::recv`] / [`Tun::send`] move one
//! IP packet, never blocking (`WouldBlock` when there is nothing to read).
//!
//! Contract: the device exists while the [`Tun`] lives (closing its descriptor removes it).
//! Creating one needs CAP_NET_ADMIN; reading and writing do not, so a daemon creates its
//! devices before it drops its capabilities.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// One TUN device.
#[derive(Debug)]
pub struct Tun {
    file: File,
    name: String,
    ifindex: u32,
}

fn check(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// An `ifreq` naming `name` (checked to fit, with its NUL).
fn ifreq(name: &str) -> io::Result<libc::ifreq> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('\0') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("interface name {name:?}: 1 to 15 bytes"),
        ));
    }
    // SAFETY: ifreq is plain old data (a name and a union of integers and sockaddrs); all
    // zeroes is a valid value of it.
    let mut r: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in r.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    Ok(r)
}

fn sockaddr(a: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(a).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size (16 bytes) on Linux, and every
    // bit pattern is a valid sockaddr.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

/// One interface ioctl on `fd` with `r`.
fn ioctl(fd: RawFd, req: libc::Ioctl, r: &mut libc::ifreq) -> io::Result<()> {
    // SAFETY: `r` is a valid, exclusively borrowed ifreq for the duration of the call, which
    // is what every request used here (TUNSETIFF, SIOCS/GIF*) reads or writes.
    check(unsafe { libc::ioctl(fd, req, r as *mut libc::ifreq) }).map(|_| ())
}

impl Tun {
    /// Creates TUN device `name` with `addr`/`prefix`, `mtu`, up.
    pub fn create(name: &str, addr: Ipv4Addr, prefix: u8, mtu: u32) -> io::Result<Tun> {
        let mut r = ifreq(name)?;
        // SAFETY: a NUL-terminated path and plain flags; the result is checked.
        let fd = check(unsafe {
            libc::open(
                c"/dev/net/tun".as_ptr(),
                libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
            )
        })?;
        // SAFETY: `fd` was just opened and is owned by nobody else.
        let tun = unsafe { OwnedFd::from_raw_fd(fd) };
        r.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
        ioctl(tun.as_raw_fd(), libc::TUNSETIFF, &mut r)?;
        // Address, netmask, MTU and flags through an ordinary socket.
        // SAFETY: plain arguments; the result is checked.
        let s = check(unsafe {
            libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0)
        })?;
        // SAFETY: `s` was just created and is owned by nobody else.
        let sock = unsafe { OwnedFd::from_raw_fd(s) };
        let mut r = ifreq(name)?;
        r.ifr_ifru.ifru_addr = sockaddr(addr);
        ioctl(sock.as_raw_fd(), libc::SIOCSIFADDR as libc::Ioctl, &mut r)?;
        let mask = if prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(prefix.min(32)))
        };
        r.ifr_ifru.ifru_netmask = sockaddr(Ipv4Addr::from(mask));
        ioctl(
            sock.as_raw_fd(),
            libc::SIOCSIFNETMASK as libc::Ioctl,
            &mut r,
        )?;
        r.ifr_ifru.ifru_mtu = mtu as libc::c_int;
        ioctl(sock.as_raw_fd(), libc::SIOCSIFMTU as libc::Ioctl, &mut r)?;
        ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS as libc::Ioctl, &mut r)?;
        // SAFETY: SIOCGIFFLAGS just wrote the flags member of the union.
        let flags = unsafe { r.ifr_ifru.ifru_flags };
        r.ifr_ifru.ifru_flags = flags | (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS as libc::Ioctl, &mut r)?;
        ioctl(sock.as_raw_fd(), libc::SIOCGIFINDEX as libc::Ioctl, &mut r)?;
        // SAFETY: SIOCGIFINDEX just wrote the ifindex member of the union.
        let ifindex = unsafe { r.ifr_ifru.ifru_ifindex } as u32;
        Ok(Tun {
            file: File::from(tun),
            name: name.to_string(),
            ifindex,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The kernel's index of the device (routes name their interface by it).
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// One packet the kernel sent into the device (`WouldBlock`: none waiting).
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        (&self.file).read(buf)
    }

    /// Hands one IP packet to the kernel as if it arrived on the device.
    pub fn send(&self, pkt: &[u8]) -> io::Result<usize> {
        (&self.file).write(pkt)
    }
}

impl AsRawFd for Tun {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_must_fit() {
        assert!(ifreq("").is_err());
        assert!(ifreq("sixteen-chars-xx").is_err());
        assert!(ifreq("espd1").is_ok());
    }
}
