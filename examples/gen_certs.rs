//! Writes the sample PKI used by the examples: a CA, a server certificate for
//! `localhost`, `127.0.0.1` and `::1`, a client certificate, and for rotation and
//! revocation: a second server certificate (`server2`), a revoked server certificate
//! (`revoked-server`), a revoked client certificate (`revoked-client`) and the CA's CRL
//! revoking those two (`crl.pem`).
//!
//! ```text
//! cargo run --example gen_certs [-- --out certs]
//! ```
//!
//! The private keys it writes are samples: never use them in production.

use std::path::PathBuf;

use clap::Parser;

/// Generate the sample CA, server and client certificates.
#[derive(Parser)]
struct Args {
    /// Directory to write the files into (see certs/README.md for the list).
    #[arg(long, default_value = "certs")]
    out: PathBuf,
    /// Server names (DNS names or IP literals) for the server certificate.
    #[arg(long = "name", default_values_t = ["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()])]
    names: Vec<String>,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let names: Vec<&str> = args.names.iter().map(String::as_str).collect();
    let pki = biotls::pki::Pki::generate(&names)?;
    pki.write_to_dir(&args.out)?;
    let server2 = pki.issue_server(&names)?;
    server2.write_to_dir(&args.out, "server2")?;
    let revoked_server = pki.issue_server(&names)?;
    revoked_server.write_to_dir(&args.out, "revoked-server")?;
    let revoked_client = pki.issue_client("biotls revoked test client")?;
    revoked_client.write_to_dir(&args.out, "revoked-client")?;
    let crl = pki.crl(&[&revoked_server.chain_pem, &revoked_client.chain_pem])?;
    let crl_path = args.out.join("crl.pem");
    std::fs::write(&crl_path, crl).map_err(|e| format!("{}: {e}", crl_path.display()))?;
    println!(
        "wrote ca, server, client, server2, revoked-server, revoked-client (.pem, .key) and \
         crl.pem to {} (server names: {})",
        args.out.display(),
        names.join(", ")
    );
    Ok(())
}
