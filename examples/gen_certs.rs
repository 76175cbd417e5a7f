//! Writes the sample PKI used by the examples: a CA, a server certificate for
//! `localhost`, `127.0.0.1` and `::1`, and a client certificate.
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
    /// Directory to write ca.pem, ca.key, server.pem, server.key, client.pem, client.key.
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
    println!(
        "wrote ca.pem ca.key server.pem server.key client.pem client.key to {} (server names: {})",
        args.out.display(),
        names.join(", ")
    );
    Ok(())
}
