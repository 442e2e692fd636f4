//! TLS for Cairn's network fronts: the certificate and key `cairn serve --tls-cert/--tls-key`
//! names, checked once at start, and a listener that hands the HTTP server only connections
//! whose TLS handshake has finished.
//!
//! The gRPC front takes the same PEM files ([`TlsIdentity::cert_pem`], [`TlsIdentity::key_pem`])
//! through tonic's own TLS support. This module never decides who may call: that is the bearer
//! token's job; TLS only keeps the token and the payloads private on the wire.

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;

/// A handshake that has not finished after this long is dropped, so a client that connects and
/// says nothing holds no more than a socket for a while.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a certificate or key cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the TLS {what} {}: {source}", path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the TLS certificate file {} holds no PEM certificate (expected '-----BEGIN CERTIFICATE-----'): {detail}",
        path.display()
    )]
    NoCertificate { path: PathBuf, detail: String },
    #[error(
        "the TLS key file {} holds no PEM private key (expected PKCS#8, PKCS#1 or SEC1, unencrypted): {detail}",
        path.display()
    )]
    NoKey { path: PathBuf, detail: String },
    #[error("the TLS certificate and key cannot be served together (does the key belong to the certificate?): {0}")]
    Mismatch(String),
}

/// A server certificate chain and its private key, as PEM, checked to form a usable identity.
#[derive(Clone)]
pub struct TlsIdentity {
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    config: Arc<rustls::ServerConfig>,
}

impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("TlsIdentity").finish_non_exhaustive()
    }
}

impl TlsIdentity {
    /// Reads `cert` (the server certificate first, then any intermediates) and `key`, and
    /// checks that they form a TLS server identity.
    pub fn load(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let read = |what, path: &Path| {
            std::fs::read(path).map_err(|source| TlsError::Read {
                what,
                path: path.to_path_buf(),
                source,
            })
        };
        let cert_pem = read("certificate file", cert)?;
        let key_pem = read("key file", key)?;
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| TlsError::NoCertificate {
                path: cert.to_path_buf(),
                detail: e.to_string(),
            })?;
        if chain.is_empty() {
            return Err(TlsError::NoCertificate {
                path: cert.to_path_buf(),
                detail: "the file has no certificate section".into(),
            });
        }
        let private = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::NoKey {
            path: key.to_path_buf(),
            detail: e.to_string(),
        })?;
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Mismatch(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(|e| TlsError::Mismatch(e.to_string()))?;
        // The HTTP front speaks HTTP/1.1 only.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TlsIdentity {
            cert_pem,
            key_pem,
            config: Arc::new(config),
        })
    }

    /// The certificate chain as read, PEM.
    pub fn cert_pem(&self) -> &[u8] {
        &self.cert_pem
    }

    /// The private key as read, PEM.
    pub fn key_pem(&self) -> &[u8] {
        &self.key_pem
    }

    /// Connections accepted on `listener`, each handed on once its TLS handshake has finished
    /// (handshakes run concurrently, so a slow client does not hold up the others).
    pub fn listener(&self, listener: TcpListener) -> std::io::Result<TlsListener> {
        let addr = listener.local_addr()?;
        let acceptor = tokio_rustls::TlsAcceptor::from(self.config.clone());
        let (ready_tx, ready) = tokio::sync::mpsc::channel(64);
        let accepting = tokio::spawn(async move {
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors and the like: wait instead of spinning.
                        tracing::debug!("accepting an HTTPS connection failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                if let Err(e) = tcp.set_nodelay(true) {
                    tracing::debug!("cannot set TCP_NODELAY on an HTTPS connection: {e}");
                }
                let acceptor = acceptor.clone();
                let ready_tx = ready_tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            let _ = ready_tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, "TLS handshake failed: {e}")
                        }
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener {
            addr,
            ready,
            accepting,
        })
    }
}

/// A TCP listener whose connections come out with TLS set up (see [`TlsIdentity::listener`]).
pub struct TlsListener {
    addr: SocketAddr,
    ready: tokio::sync::mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    accepting: tokio::task::JoinHandle<()>,
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(ready) => ready,
            // The accepting task only ends when this listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Each way the files can be wrong gets its own message, naming the file.
    #[test]
    fn wrong_files_are_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let made = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let cert = write(dir.path(), "cert.pem", &made.cert.pem());
        let key = write(dir.path(), "key.pem", &made.signing_key.serialize_pem());
        let other = rcgen::KeyPair::generate().unwrap();
        let other_key = write(dir.path(), "other.pem", &other.serialize_pem());
        let junk = write(dir.path(), "junk.pem", "not a pem file\n");

        assert!(TlsIdentity::load(&cert, &key).is_ok());
        let missing = dir.path().join("missing.pem");
        let e = TlsIdentity::load(&missing, &key).unwrap_err().to_string();
        assert!(
            e.contains("cannot read the TLS certificate file") && e.contains("missing.pem"),
            "{e}"
        );
        let e = TlsIdentity::load(&junk, &key).unwrap_err().to_string();
        assert!(e.contains("holds no PEM certificate"), "{e}");
        let e = TlsIdentity::load(&cert, &junk).unwrap_err().to_string();
        assert!(e.contains("holds no PEM private key"), "{e}");
        let e = TlsIdentity::load(&cert, &other_key)
            .unwrap_err()
            .to_string();
        assert!(e.contains("does the key belong"), "{e}");
        // The key is nowhere in what gets logged.
        let id = TlsIdentity::load(&cert, &key).unwrap();
        assert!(!format!("{id:?}").contains("PRIVATE"));
    }
}
