//! rustls server configuration for OTLP/HTTP from PEM files; with a client CA, client
//! certificates are required and checked (mTLS).

use std::sync::Arc;

use oxeye_api::BoxError;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::ServerTls;

fn certs(path: &str) -> Result<Vec<CertificateDer<'static>>, BoxError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read certificates from `{path}`: {e}"))?;
    if certs.is_empty() {
        return Err(format!("`{path}` holds no PEM certificate").into());
    }
    Ok(certs)
}

/// The server config, offering h2 and HTTP/1.1.
pub(crate) fn server_config(tls: &ServerTls) -> Result<Arc<rustls::ServerConfig>, BoxError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?;
    let builder = match &tls.client_ca_file {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in certs(ca)? {
                roots
                    .add(cert)
                    .map_err(|e| format!("`{ca}`: not a usable CA certificate: {e}"))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|e| format!("`{ca}`: {e}"))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let key = PrivateKeyDer::from_pem_file(&tls.key_file)
        .map_err(|e| format!("cannot read a private key from `{}`: {e}", tls.key_file))?;
    let mut config = builder
        .with_single_cert(certs(&tls.cert_file)?, key)
        .map_err(|e| format!("`{}` and `{}`: {e}", tls.cert_file, tls.key_file))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
