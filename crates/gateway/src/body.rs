//! Body plumbing for the proxy.
//!
//! - [`hold`] reads a request body into memory when it is small enough to be sent again (or
//!   declares no length), and otherwise hands the part it read plus the rest on as a stream.
//! - [`Handoff`] lends a streamed body to one attempt; if that attempt fails before it took the
//!   body (a refused connection), the body is still in its slot and the next attempt gets it.
//! - [`Logged`] wraps a response body: it counts the bytes, keeps the upstream's in-flight count
//!   up until the last byte, and writes the access log when the body ends or is dropped.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use axum::body::Body;
use bytes::{Bytes, BytesMut};
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::observe::AccessRecord;
use crate::pool::InFlight;

/// A request body, ready for one or more attempts.
pub struct Held {
    kept: Kept,
    /// The bytes this body takes of the gateway's budget for held bodies, given back when the
    /// request is done with it.
    _reserved: Option<OwnedSemaphorePermit>,
}

enum Kept {
    /// All of it, in memory: any attempt can send it.
    Bytes(Bytes),
    /// Too big to hold: it can be sent once, or handed to a second attempt if the first never
    /// touched it.
    Stream(Arc<Mutex<Option<Unread>>>),
}

impl Held {
    /// No body at all.
    pub fn empty() -> Self {
        Self { kept: Kept::Bytes(Bytes::new()), _reserved: None }
    }

    pub fn bytes(&self) -> Option<&[u8]> {
        match &self.kept {
            Kept::Bytes(bytes) => Some(bytes),
            Kept::Stream(_) => None,
        }
    }

    /// Whether an attempt can still send the whole body.
    pub fn available(&self) -> bool {
        match &self.kept {
            Kept::Bytes(_) => true,
            Kept::Stream(slot) => lock(slot).is_some(),
        }
    }

    /// The body of one attempt.
    pub fn for_attempt(&self) -> ProxyBody {
        match &self.kept {
            Kept::Bytes(bytes) => {
                http_body_util::Full::new(bytes.clone()).map_err(|never| match never {}).boxed_unsync()
            }
            Kept::Stream(slot) => Handoff { slot: slot.clone(), taken: None }.boxed_unsync(),
        }
    }
}

/// The body type sent to upstreams.
pub type ProxyBody = http_body_util::combinators::UnsyncBoxBody<Bytes, axum::Error>;

/// Why a body could not be held.
#[derive(Debug)]
pub enum HoldError {
    /// More than the gateway takes arrived (a body without a declared length).
    TooLarge,
    /// The bodies held at this moment already take the whole budget for held bodies.
    NoRoom,
    Read(axum::Error),
}

/// Reads `body` into memory if it declares at most `limit` bytes, else hands it on as a stream
/// (a declared length was already checked against the maximum). A body that declares no length
/// (chunked) is held whole, up to `max` bytes, so that one too large is refused before any of it
/// reaches an upstream. Trailers of a held body are dropped.
///
/// Every byte held is first taken from `budget` (permits of one byte, shared by all requests),
/// so that many large bodies at once cannot exhaust the gateway's memory: when the budget is
/// spent the request is refused (`NoRoom`) before any of it is sent.
pub async fn hold<B>(mut body: B, limit: usize, max: u64, budget: &Arc<Semaphore>) -> Result<Held, HoldError>
where
    B: http_body::Body<Data = Bytes> + Unpin + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    let declared = body.size_hint().exact().is_some();
    if declared && body.size_hint().lower() > limit as u64 {
        return Ok(stream(None, Body::new(body), None));
    }
    let mut buf = BytesMut::new();
    let mut reserved: Option<OwnedSemaphorePermit> = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|err| HoldError::Read(axum::Error::new(err)))?;
        let Ok(data) = frame.into_data() else { continue };
        if buf.len() as u64 + data.len() as u64 > max {
            return Err(HoldError::TooLarge);
        }
        reserve(budget, &mut reserved, data.len())?;
        buf.extend_from_slice(&data);
        if declared && buf.len() > limit {
            return Ok(stream(Some(buf.freeze()), Body::new(body), reserved));
        }
    }
    Ok(Held { kept: Kept::Bytes(buf.freeze()), _reserved: reserved })
}

/// Takes `bytes` more of the budget into `reserved`, or refuses at once: waiting for room
/// would hold the client's connection and its bytes so far while the gateway is short.
fn reserve(
    budget: &Arc<Semaphore>,
    reserved: &mut Option<OwnedSemaphorePermit>,
    bytes: usize,
) -> Result<(), HoldError> {
    let bytes = u32::try_from(bytes).map_err(|_| HoldError::TooLarge)?;
    let permit = budget.clone().try_acquire_many_owned(bytes).map_err(|_| HoldError::NoRoom)?;
    match reserved {
        Some(reserved) => reserved.merge(permit),
        None => *reserved = Some(permit),
    }
    Ok(())
}

fn stream(prefix: Option<Bytes>, rest: Body, reserved: Option<OwnedSemaphorePermit>) -> Held {
    Held { kept: Kept::Stream(Arc::new(Mutex::new(Some(Unread { prefix, rest })))), _reserved: reserved }
}

fn lock<T>(slot: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    slot.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What [`hold`] read of a big body, then the rest of it.
pub struct Unread {
    prefix: Option<Bytes>,
    rest: Body,
}

impl http_body::Body for Unread {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        if let Some(prefix) = self.prefix.take() {
            return Poll::Ready(Some(Ok(Frame::data(prefix))));
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }
}

/// Takes the body out of its slot on the first poll, never before.
struct Handoff {
    slot: Arc<Mutex<Option<Unread>>>,
    taken: Option<Unread>,
}

impl http_body::Body for Handoff {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        if self.taken.is_none() {
            let taken = lock(&self.slot).take();
            self.taken = taken;
        }
        match self.taken.as_mut() {
            Some(body) => Pin::new(body).poll_frame(cx),
            // Another attempt took it: this one must not pretend the body was empty.
            None => Poll::Ready(Some(Err(axum::Error::new("the request body was already sent")))),
        }
    }
}

/// A response body on its way to the client.
pub struct Logged<B> {
    inner: B,
    bytes: u64,
    /// Whether the body was empty from the start.
    empty: bool,
    record: Option<AccessRecord>,
    _in_flight: Option<InFlight>,
}

impl<B: http_body::Body> Logged<B> {
    pub fn new(inner: B, record: AccessRecord, in_flight: Option<InFlight>) -> Self {
        let empty = inner.is_end_stream();
        Self { inner, bytes: 0, empty, record: Some(record), _in_flight: in_flight }
    }
}

impl<B> Logged<B> {
    fn finish(&mut self, complete: bool) {
        if let Some(record) = self.record.take() {
            record.finish(self.bytes, complete);
        }
    }
}

impl<B> http_body::Body for Logged<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                self.bytes += frame.data_ref().map_or(0, |data| data.len() as u64);
                if self.inner.is_end_stream() {
                    self.finish(true);
                }
            }
            Poll::Ready(None) => self.finish(true),
            Poll::Ready(Some(Err(_))) => self.finish(false),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for Logged<B> {
    fn drop(&mut self) {
        // An empty body (a HEAD answer, a 204) may never be polled: it is complete all the same.
        let complete = self.record.is_some() && self.bytes == 0 && self.empty;
        self.finish(complete);
    }
}
