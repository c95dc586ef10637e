//! TLS to PostgreSQL, chosen by the URL's `sslmode` as libpq defines it
//! (<https://www.postgresql.org/docs/current/libpq-ssl.html#LIBPQ-SSL-PROTECTION>):
//! - `disable` (the default here): plain TCP;
//! - `prefer`, `require`: encrypted (`prefer` falls back to plain when the server has no TLS), the certificate
//!   **not** checked — libpq's meaning of these modes without a root certificate; it guards against eavesdropping,
//!   not against someone in the middle;
//! - `verify-ca`: encrypted, the certificate chain checked against `sslrootcert=FILE` (PEM), or against the
//!   Mozilla roots (`webpki-roots`) when no file is given;
//! - `verify-full`: as `verify-ca`, and the certificate must name the host connected to.
//!
//! The `postgres` client only knows `disable`, `prefer` and `require`: the two verifying modes and `sslrootcert`
//! are taken out of the URL here and become the rustls configuration.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::super::StoreError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    Off,
    /// Encrypted, the certificate not checked; `required: false` falls back to plain TCP.
    Encrypt {
        required: bool,
    },
    /// Encrypted and checked: the chain against `roots` (or the Mozilla roots), the host name when `host_name`.
    Verify {
        host_name: bool,
        roots: Option<PathBuf>,
    },
}

impl Mode {
    /// The URL without what the `postgres` client cannot read, and the mode it asks for.
    pub fn split_from(url: &str) -> Result<(String, Mode), StoreError> {
        let Some((base, query)) = url.split_once('?') else {
            return Ok((url.to_string(), Mode::Off));
        };
        let mut sslmode = None;
        let mut roots = None;
        let mut kept = form_urlencoded::Serializer::new(String::new());
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            match &*key {
                "sslmode" => sslmode = Some(value.into_owned()),
                "sslrootcert" => roots = Some(PathBuf::from(value.into_owned())),
                _ => {
                    kept.append_pair(&key, &value);
                }
            }
        }
        let mode = match sslmode.as_deref() {
            None | Some("disable") => Mode::Off,
            Some("allow" | "prefer") => Mode::Encrypt { required: false },
            Some("require") => Mode::Encrypt { required: true },
            Some("verify-ca") => Mode::Verify {
                host_name: false,
                roots: roots.clone(),
            },
            Some("verify-full") => Mode::Verify {
                host_name: true,
                roots: roots.clone(),
            },
            Some(other) => {
                return Err(StoreError::Other(format!(
                    "invalid PostgreSQL URL: sslmode `{other}` (disable, prefer, require, verify-ca or verify-full)"
                )));
            }
        };
        if roots.is_some() && !matches!(mode, Mode::Verify { .. }) {
            return Err(StoreError::Other(
                "invalid PostgreSQL URL: sslrootcert is only used with sslmode=verify-ca or verify-full".into(),
            ));
        }
        let client_mode = match mode {
            Mode::Off => "disable",
            Mode::Encrypt { required: false } => "prefer",
            _ => "require",
        };
        kept.append_pair("sslmode", client_mode);
        Ok((format!("{base}?{}", kept.finish()), mode))
    }

    /// The TLS connector for a connection, `None` for plain TCP. Built per connection: they are few, and a
    /// replaced root certificate file is read again.
    pub fn connector(&self) -> Result<Option<MakeRustlsConnect>, StoreError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(tls_error)?;
        let config = match self {
            Mode::Off => return Ok(None),
            Mode::Encrypt { .. } => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
                .with_no_client_auth(),
            Mode::Verify { host_name, roots } => {
                let mut store = RootCertStore::empty();
                match roots {
                    Some(path) => {
                        let certificates = CertificateDer::pem_file_iter(path).map_err(|e| {
                            StoreError::Other(format!(
                                "cannot read sslrootcert {}: {e}",
                                path.display()
                            ))
                        })?;
                        for certificate in certificates {
                            let certificate = certificate.map_err(|e| {
                                StoreError::Other(format!(
                                    "cannot read sslrootcert {}: {e}",
                                    path.display()
                                ))
                            })?;
                            store.add(certificate).map_err(tls_error)?;
                        }
                    }
                    None => store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
                }
                let verifier =
                    WebPkiServerVerifier::builder_with_provider(Arc::new(store), provider)
                        .build()
                        .map_err(|e| StoreError::Other(format!("PostgreSQL TLS: {e}")))?;
                if *host_name {
                    builder.with_webpki_verifier(verifier).with_no_client_auth()
                } else {
                    builder
                        .dangerous()
                        .with_custom_certificate_verifier(Arc::new(ChainOnly(verifier)))
                        .with_no_client_auth()
                }
            }
        };
        Ok(Some(MakeRustlsConnect::new(config)))
    }
}

fn tls_error(error: rustls::Error) -> StoreError {
    StoreError::Other(format!("PostgreSQL TLS: {error}"))
}

/// `prefer` / `require`: any certificate, but the handshake's signatures are still verified.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain is checked, the name in the certificate is not.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_verifying_modes_and_the_root_file_are_taken_out_of_the_url() {
        let (url, mode) = Mode::split_from(
            "postgres://u@h:5432/db?sslmode=verify-full&sslrootcert=%2Fca.pem&application_name=x",
        )
        .unwrap();
        assert_eq!(
            url,
            "postgres://u@h:5432/db?application_name=x&sslmode=require"
        );
        assert_eq!(
            mode,
            Mode::Verify {
                host_name: true,
                roots: Some(PathBuf::from("/ca.pem"))
            }
        );
        let (url, mode) = Mode::split_from("postgres://u@h/db").unwrap();
        assert_eq!((url.as_str(), mode), ("postgres://u@h/db", Mode::Off));
        let (_, mode) = Mode::split_from("postgres://u@h/db?sslmode=require").unwrap();
        assert_eq!(mode, Mode::Encrypt { required: true });
        assert!(Mode::split_from("postgres://u@h/db?sslmode=maybe").is_err());
        assert!(Mode::split_from("postgres://u@h/db?sslrootcert=/ca.pem").is_err());
    }
}
