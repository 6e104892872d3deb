//! A small HTTP/1 client over a Unix socket, for the CLI and for the daemon driving its VMMs.

use std::path::{Path, PathBuf};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use tokio::net::UnixStream;

use crate::ApiError;

/// A call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {path}: {source}")]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("HTTP exchange with {path} failed: {source}")]
    Http { path: PathBuf, source: hyper::Error },
    #[error("{0}")]
    Api(ApiError),
    #[error("{what}: cannot decode the answer: {reason}")]
    Decode { what: String, reason: String },
}

/// An answer: status and body.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

/// A client of one Unix socket; every call opens its own connection.
#[derive(Clone, Debug)]
pub struct Client {
    path: PathBuf,
}

impl Client {
    /// A client of the socket at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Client { path: path.into() }
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sends one request and returns the status with the response's body still streaming.
    pub async fn open(
        &self,
        method: &str,
        uri: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> Result<hyper::Response<Incoming>, ClientError> {
        let stream =
            UnixStream::connect(&self.path)
                .await
                .map_err(|source| ClientError::Connect {
                    path: self.path.clone(),
                    source,
                })?;
        let http = |source| ClientError::Http {
            path: self.path.clone(),
            source,
        };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(http)?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .header("host", "localhost");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| ClientError::Decode {
                what: format!("{method} {uri}"),
                reason: e.to_string(),
            })?;
        sender.send_request(req).await.map_err(http)
    }

    /// Sends `GET uri` asking to upgrade the connection to `protocol`; on 101 returns the raw
    /// byte stream.
    pub async fn upgrade(
        &self,
        uri: &str,
        protocol: &str,
    ) -> Result<TokioIo<hyper::upgrade::Upgraded>, ClientError> {
        let stream =
            UnixStream::connect(&self.path)
                .await
                .map_err(|source| ClientError::Connect {
                    path: self.path.clone(),
                    source,
                })?;
        let http = |source| ClientError::Http {
            path: self.path.clone(),
            source,
        };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(http)?;
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        let req = Request::builder()
            .method("GET")
            .uri(uri)
            .header("host", "localhost")
            .header("connection", "upgrade")
            .header("upgrade", protocol)
            .body(Full::new(Bytes::new()))
            .map_err(|e| ClientError::Decode {
                what: format!("GET {uri}"),
                reason: e.to_string(),
            })?;
        let resp = sender.send_request(req).await.map_err(http)?;
        let status = resp.status().as_u16();
        if status != 101 {
            let body = resp.into_body().collect().await.map_err(http)?.to_bytes();
            return Err(ClientError::Api(error_from(status, &body)));
        }
        let up = hyper::upgrade::on(resp).await.map_err(http)?;
        Ok(TokioIo::new(up))
    }

    /// Sends one request and reads the whole answer.
    pub async fn request(
        &self,
        method: &str,
        uri: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Response, ClientError> {
        let resp = self.open(method, uri, &[], body).await?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|source| ClientError::Http {
                path: self.path.clone(),
                source,
            })?
            .to_bytes()
            .to_vec();
        Ok(Response { status, body })
    }

    /// A call whose 2xx answer is JSON of type `T`; other answers become [`ClientError::Api`].
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        uri: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<T, ClientError> {
        let r = self
            .request(method, uri, body.map(|b| b.to_string().into_bytes()))
            .await?;
        let body = if r.body.is_empty() {
            b"null".as_slice()
        } else {
            &r.body
        };
        if (200..300).contains(&r.status) {
            serde_json::from_slice(body).map_err(|e| ClientError::Decode {
                what: format!("{method} {uri}"),
                reason: e.to_string(),
            })
        } else {
            Err(ClientError::Api(error_from(r.status, &r.body)))
        }
    }
}

/// The [`ApiError`] of a non-2xx answer (a plain-text body becomes its message).
pub fn error_from(status: u16, body: &[u8]) -> ApiError {
    match serde_json::from_slice::<ApiError>(body) {
        Ok(mut e) => {
            e.status = status;
            e
        }
        Err(_) => ApiError::new(
            status,
            "http",
            String::from_utf8_lossy(body).trim().to_string(),
        ),
    }
}
