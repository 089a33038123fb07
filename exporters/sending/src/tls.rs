//! TLS client settings: the server's certificate checked against `ca_file` or the system's
//! roots (or not at all with `insecure_skip_verify`), and a client certificate for mutual TLS.

use std::sync::Arc;

use oxeye_api::BoxError;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The files and switches of a `tls:` section (an empty path is no path).
#[derive(Clone, Debug, Default)]
pub struct ClientTls {
    /// PEM CA certificates to trust instead of the system's roots.
    pub ca_file: Option<String>,
    /// PEM client certificate (mutual TLS); goes with `key_file`.
    pub cert_file: Option<String>,
    /// PEM private key of `cert_file`.
    pub key_file: Option<String>,
    /// Accept any server certificate (testing only).
    pub insecure_skip_verify: bool,
}

fn read(path: &str, what: &str) -> Result<Vec<u8>, BoxError> {
    std::fs::read(path).map_err(|e| format!("cannot read {what} `{path}`: {e}").into())
}

/// The rustls client config for `tls`; `https` says whether the endpoint needs roots (none
/// found on the system is an error then). hyper-rustls sets ALPN from the HTTP versions.
pub fn client_config(tls: &ClientTls, https: bool) -> Result<rustls::ClientConfig, BoxError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()?;
    let builder = if tls.insecure_skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyServer(provider)))
    } else {
        let mut roots = rustls::RootCertStore::empty();
        match tls.ca_file.as_deref().filter(|p| !p.is_empty()) {
            Some(path) => {
                let pem = read(path, "CA file")?;
                for cert in CertificateDer::pem_slice_iter(&pem) {
                    let cert = cert.map_err(|e| format!("CA file `{path}`: {e}"))?;
                    roots
                        .add(cert)
                        .map_err(|e| format!("CA file `{path}`: {e}"))?;
                }
                if roots.is_empty() {
                    return Err(format!("CA file `{path}` holds no PEM certificate").into());
                }
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                let (added, _) = roots.add_parsable_certificates(found.certs);
                if added == 0 && https {
                    return Err("no system CA certificates found: set `tls.ca_file`".into());
                }
            }
        }
        builder.with_root_certificates(roots)
    };
    let set = |f: &Option<String>| f.clone().filter(|p| !p.is_empty());
    let config = match (set(&tls.cert_file), set(&tls.key_file)) {
        (Some(cert), Some(key)) => {
            let pem = read(&cert, "client certificate")?;
            let chain = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("client certificate `{cert}`: {e}"))?;
            let key_der = PrivateKeyDer::from_pem_slice(&read(&key, "client key")?)
                .map_err(|e| format!("client key `{key}`: {e}"))?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| format!("client certificate `{cert}`: {e}"))?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(config)
}

/// `tls.insecure_skip_verify`: accepts any certificate but still checks handshake signatures.
#[derive(Debug)]
struct AcceptAnyServer(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
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
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
