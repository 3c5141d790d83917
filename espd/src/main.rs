//! `espd`: the appliance binary. Commands: `run` (the gateway), `show`, `pcap encrypt|decrypt`,
//! `mtu`, `crypto`, `check-config`, `export-config`.

use clap::{CommandFactory, Parser, Subcommand};
use engine::crypto::Backend;
use espd::cli::{self, DecryptOpts, EncryptOpts};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "espd",
    version,
    about = "User-space IPsec ESP engine (RFC 4303 tunnel mode) for AWS Site-to-Site VPN tunnels"
)]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Encrypt or decrypt packets of a pcap or pcapng file with static SAs (the output has
    /// the input's format).
    Pcap {
        #[command(subcommand)]
        op: PcapOp,
    },
    /// Print the inner MTU and TCP MSS for every transform and NAT-T state (1500-byte path).
    Mtu {
        /// JSON array of {encryption, integrity, nat_t, mtu, mss_ipv4, mss_ipv6_in_ipv4}.
        #[arg(long)]
        json: bool,
    },
    /// Show the crypto backends available on this machine and which one `auto` picks.
    Crypto,
    /// (Internal) keep BIRD running for `espd run`; started by it.
    #[command(hide = true)]
    BirdSupervise {
        #[arg(long)]
        bird: String,
        #[arg(long)]
        conf: PathBuf,
        #[arg(long)]
        ctl: PathBuf,
    },
    /// Write the customer-gateway side of a tunnel, as AWS's downloadable configuration does.
    ExportConfig {
        /// The tunnel configuration file.
        file: PathBuf,
        /// The customer gateway's side: strongswan (swanctl.conf), generic (vendor-neutral
        /// text) or bird (its BGP session over the tunnel, BIRD 2).
        #[arg(long, default_value = "strongswan")]
        peer: String,
        /// The tunnel's name (not with --bird).
        #[arg(required_unless_present = "bird")]
        tunnel: Option<String>,
        /// Instead: espd's own BIRD 2 configuration, one BGP session per tunnel with
        /// routing = "dynamic" (to run BIRD beside espd).
        #[arg(long, conflicts_with = "tunnel")]
        bird: bool,
        /// Output file (default: stdout). The output holds the PSK.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Run the gateway: XDP + AF_XDP on the [gateway] interfaces, static SAs of the tunnels.
    /// SIGINT/SIGTERM detach cleanly; SIGHUP reloads the static SAs.
    Run {
        /// The tunnel configuration with a [gateway] table.
        #[arg(long)]
        config: PathBuf,
        /// Debug only: write every SA's keys in Wireshark's esp_sa format to this file.
        #[arg(long, value_name = "FILE")]
        export_keys: Option<PathBuf>,
        /// Diagnostics on stderr: text (journald-friendly under systemd) or json.
        #[arg(long, default_value = "text", value_name = "text|json")]
        log_format: espd::diag::LogFormat,
        /// Diagnostics level: error, warn, info, debug, trace (ESPD_LOG overrides, with
        /// per-module filters such as `espd::ike_ctl=debug`).
        #[arg(long, default_value = "info", value_name = "LEVEL")]
        log_level: String,
    },
    /// Ask the running espd for its tunnels, SAs or counters (over its control socket).
    Show {
        /// tunnels | sas | counters | routes
        what: String,
        #[arg(long)]
        json: bool,
        /// The control socket (default: the [gateway] control_socket default).
        #[arg(long, default_value = espd::config::DEFAULT_CONTROL_SOCKET)]
        socket: String,
    },
    /// Ask the running espd to rekey a tunnel's IKE SA or CHILD_SA now (operators, tests).
    Rekey {
        /// The tunnel's name.
        tunnel: String,
        /// ike | child
        #[arg(long, default_value = "child")]
        what: String,
        /// The control socket (default: the [gateway] control_socket default).
        #[arg(long, default_value = espd::config::DEFAULT_CONTROL_SOCKET)]
        socket: String,
    },
    /// Print the espd(1) man page (roff), e.g. `espd man > /usr/share/man/man1/espd.1`.
    Man,
    /// Print shell completions: bash, zsh, fish, elvish or powershell.
    Completions { shell: clap_complete::Shell },
    /// Validate a tunnel configuration: exit 0 with one line per tunnel, or print every error.
    CheckConfig {
        /// The TOML file ([[tunnel]] tables with the AWS option names).
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum PcapOp {
    /// Each inner IP packet goes through the first "out" SA (or --sa-name): MSS clamping,
    /// fragmentation before encryption, ESP.
    Encrypt {
        #[arg(long = "sa", value_name = "FILE")]
        sa: PathBuf,
        #[arg(long = "in", value_name = "IN.pcap")]
        input: PathBuf,
        #[arg(long = "out", value_name = "OUT.pcap")]
        output: PathBuf,
        #[arg(long)]
        sa_name: Option<String>,
        /// Write ICMP errors (DF honoured, IPv6 Packet Too Big) to this pcap.
        #[arg(long, value_name = "FILE")]
        icmp_out: Option<PathBuf>,
        /// auto | rustcrypto | ipsec-mb
        #[arg(long, default_value = "auto")]
        backend: String,
        /// Print the counters as one JSON object on stdout.
        #[arg(long)]
        json: bool,
        /// Debug only: write the SA's keys in Wireshark's esp_sa format to this file.
        #[arg(long, value_name = "FILE")]
        export_keys: Option<PathBuf>,
    },
    /// ESP packets (IP protocol 50 or UDP 4500) are matched by SPI against the "in" SAs,
    /// replay-checked in file order, decrypted, inner fragments reassembled.
    Decrypt {
        #[arg(long = "sa", value_name = "FILE")]
        sa: PathBuf,
        #[arg(long = "in", value_name = "IN.pcap")]
        input: PathBuf,
        #[arg(long = "out", value_name = "OUT.pcap")]
        output: PathBuf,
        /// auto | rustcrypto | ipsec-mb
        #[arg(long, default_value = "auto")]
        backend: String,
        /// Drop outer fragments of ESP (counted as outer_fragment) instead of reassembling them.
        #[arg(long)]
        no_outer_reassembly: bool,
        /// Seconds a fragmented datagram may wait for its other fragments.
        #[arg(long, default_value_t = 30.0)]
        reassembly_timeout: f64,
        #[arg(long)]
        json: bool,
        /// Debug only: write the SAs' keys in Wireshark's esp_sa format to this file.
        #[arg(long, value_name = "FILE")]
        export_keys: Option<PathBuf>,
    },
}

fn backend(s: &str) -> Result<Backend, cli::CliError> {
    s.parse::<Backend>()
        .map_err(|e| cli::CliError(format!("--backend: {e}")))
}

fn run() -> Result<(), cli::CliError> {
    match Args::parse().cmd {
        Cmd::Run {
            config,
            export_keys,
            log_format,
            log_level,
        } => {
            espd::diag::init(log_format, &log_level).map_err(cli::CliError)?;
            espd::gateway::run(
                &config,
                espd::gateway::RunOpts {
                    export_keys,
                    stop: None,
                },
            )
            .map_err(cli::CliError)
        }
        Cmd::Man => {
            let mut out = Vec::new();
            clap_mangen::Man::new(Args::command())
                .render(&mut out)
                .map_err(|e| cli::CliError(e.to_string()))?;
            std::io::Write::write_all(&mut std::io::stdout(), &out)
                .map_err(|e| cli::CliError(e.to_string()))
        }
        Cmd::Completions { shell } => {
            clap_complete::generate(shell, &mut Args::command(), "espd", &mut std::io::stdout());
            Ok(())
        }
        Cmd::Show { what, json, socket } => {
            if !["tunnels", "sas", "counters", "routes"].contains(&what.as_str()) {
                return Err(cli::CliError(format!(
                    "show {what:?}: allowed: tunnels, sas, counters, routes"
                )));
            }
            let out = espd::gateway::show_client(&socket, &what, json).map_err(cli::CliError)?;
            print!("{out}");
            Ok(())
        }
        Cmd::Rekey {
            tunnel,
            what,
            socket,
        } => {
            if !["ike", "child"].contains(&what.as_str()) {
                return Err(cli::CliError(format!(
                    "rekey --what {what:?}: allowed: ike, child"
                )));
            }
            let out = espd::gateway::control_request(&socket, &format!("rekey {tunnel} {what}"))
                .map_err(cli::CliError)?;
            if let Some(e) = out.strip_prefix("error: ") {
                return Err(cli::CliError(e.trim_end().to_string()));
            }
            print!("{out}");
            Ok(())
        }
        Cmd::Pcap {
            op:
                PcapOp::Encrypt {
                    sa,
                    input,
                    output,
                    sa_name,
                    icmp_out,
                    backend: b,
                    json,
                    export_keys,
                },
        } => cli::pcap_encrypt(&EncryptOpts {
            sa_file: sa,
            input,
            output,
            sa_name,
            icmp_out,
            backend: backend(&b)?,
            json,
            export_keys,
        }),
        Cmd::Pcap {
            op:
                PcapOp::Decrypt {
                    sa,
                    input,
                    output,
                    backend: b,
                    no_outer_reassembly,
                    reassembly_timeout,
                    json,
                    export_keys,
                },
        } => cli::pcap_decrypt(&DecryptOpts {
            sa_file: sa,
            input,
            output,
            backend: backend(&b)?,
            outer_reassembly: !no_outer_reassembly,
            reasm_timeout: reassembly_timeout,
            json,
            export_keys,
        }),
        Cmd::Mtu { json } => {
            print!("{}", cli::mtu_table(json));
            if json {
                println!();
            }
            Ok(())
        }
        Cmd::CheckConfig { file } => {
            let mut fill = |b: &mut [u8]| getrandom::fill(b).expect("OS random generator");
            match espd::config::load(&file, &mut fill) {
                Ok(c) => {
                    for l in c.summary() {
                        println!("{l}");
                    }
                    for w in c.warnings() {
                        eprintln!("warning: {w}");
                    }
                    Ok(())
                }
                Err(e) => Err(cli::CliError(format!("{} error(s):\n{e}", e.0.len()))),
            }
        }
        Cmd::ExportConfig {
            file,
            peer,
            tunnel,
            bird,
            out,
        } => {
            let mut fill = |b: &mut [u8]| getrandom::fill(b).expect("OS random generator");
            let cfg = espd::config::load(&file, &mut fill)
                .map_err(|e| cli::CliError(format!("{} error(s):\n{e}", e.0.len())))?;
            let tunnel = tunnel.unwrap_or_default();
            let text = if bird {
                espd::bird::gateway_conf(&cfg).ok_or_else(|| {
                    cli::CliError(format!(
                        "{}: no tunnel has routing = \"dynamic\": nothing for BIRD",
                        file.display()
                    ))
                })?
            } else {
                String::new()
            };
            let found = cfg.tunnels.iter().find(|t| t.name == tunnel);
            let Some(t) = found
                .filter(|_| !bird)
                .or(cfg.tunnels.first().filter(|_| bird))
            else {
                let names: Vec<&str> = cfg.tunnels.iter().map(|t| t.name.as_str()).collect();
                return Err(cli::CliError(format!(
                    "{}: no tunnel {tunnel:?}; tunnels: {}",
                    file.display(),
                    names.join(", ")
                )));
            };
            let text = match peer.as_str() {
                _ if bird => text,
                "strongswan" => espd::export::strongswan(t),
                "generic" => espd::export::generic(t),
                "bird" => espd::bird::cgw_conf(t),
                p => {
                    return Err(cli::CliError(format!(
                        "--peer {p:?}: allowed: strongswan, generic, bird"
                    )));
                }
            };
            match out {
                Some(p) => std::fs::write(&p, text)
                    .map_err(|e| cli::CliError(format!("{}: {e}", p.display()))),
                None => {
                    print!("{text}");
                    Ok(())
                }
            }
        }
        Cmd::BirdSupervise { bird, conf, ctl } => {
            espd::bgpd::supervise(&bird, &conf, &ctl).map_err(cli::CliError)
        }
        Cmd::Crypto => {
            for b in [Backend::RustCrypto, Backend::IpsecMb] {
                println!(
                    "{:<11} {:<9} {}",
                    b.name(),
                    if b.available() {
                        "available"
                    } else {
                        "missing"
                    },
                    b.describe()
                );
            }
            println!("auto -> {}", Backend::fastest().name());
            if let Some(h) = Backend::upgrade_hint() {
                println!("note: {h}");
            }
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("espd: {e}");
            ExitCode::FAILURE
        }
    }
}

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
