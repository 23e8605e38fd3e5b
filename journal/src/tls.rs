//! Transport security for PostgreSQL connections, shared by the journal and by rekey's
//! PostgreSQL role provider: TLS with full verification (certificate chain and host name)
//! unless the server is on this machine.

use std::net::IpAddr;

/// Transport security of connections to a PostgreSQL server.
#[derive(Clone)]
pub enum PgTls {
    /// Plain TCP or a Unix socket; callers allow it only for loopback and sockets
    /// ([`is_local_host`]).
    Disable,
    /// TLS required, the certificate chain checked against the system's roots (plus an
    /// optional private root) and the host name checked against the certificate.
    VerifyFull(postgres_native_tls::MakeTlsConnector),
}

impl std::fmt::Debug for PgTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PgTls::Disable => "PgTls::Disable",
            PgTls::VerifyFull(_) => "PgTls::VerifyFull",
        })
    }
}

impl PgTls {
    /// TLS with full verification; `ca` is an extra PEM root, with the name of the file it
    /// came from (for messages).
    ///
    /// # Errors
    /// What could not be built, naming the file.
    pub fn verify_full(ca: Option<(&str, &[u8])>) -> Result<Self, String> {
        let mut builder = native_tls::TlsConnector::builder();
        if let Some((name, pem)) = ca {
            let cert = native_tls::Certificate::from_pem(pem)
                .map_err(|e| format!("tls_ca_file {name} is not a PEM certificate: {e}"))?;
            builder.add_root_certificate(cert);
        }
        let connector = builder
            .build()
            .map_err(|e| format!("cannot set up TLS: {e}"))?;
        Ok(PgTls::VerifyFull(
            postgres_native_tls::MakeTlsConnector::new(connector),
        ))
    }

    /// The `sslmode` these settings need: TLS required (never a plain fallback), or off.
    pub fn ssl_mode(&self) -> tokio_postgres::config::SslMode {
        match self {
            PgTls::Disable => tokio_postgres::config::SslMode::Disable,
            PgTls::VerifyFull(_) => tokio_postgres::config::SslMode::Require,
        }
    }
}

/// True for hosts whose traffic never leaves the machine: loopback addresses, `localhost`,
/// and Unix socket directories. Only these may be reached without TLS.
pub fn is_local_host(host: &str) -> bool {
    host.starts_with('/')
        || host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_and_sockets_count_as_local() {
        for h in [
            "127.0.0.1",
            "127.1.2.3",
            "::1",
            "[::1]",
            "localhost",
            "/var/run/postgresql",
        ] {
            assert!(is_local_host(h), "{h}");
        }
        for h in [
            "db.example.com",
            "10.0.0.5",
            "0.0.0.0",
            "localhost.example.com",
        ] {
            assert!(!is_local_host(h), "{h}");
        }
    }
}
