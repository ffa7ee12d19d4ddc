//! The client's deadline (`grpc-timeout`), enforced by the instrument layer.
//!
//! tonic's server has a timer of its own for `grpc-timeout`, outside every layer a
//! server adds, and answers `Canceled` "Timeout expired" when it fires; the gRPC
//! status for a call past its deadline is `DeadlineExceeded`, as grpc-go answers.
//! The instrument layer is called inside tonic's timer: its deadline starts a moment
//! earlier, and [`within`] also compares the clock, so it answers before tonic's
//! timer can (the test `tonic_server_answers_deadline_exceeded` runs the whole stack).
//! Passing the deadline drops the call's future: what the call was doing is
//! cancelled (see cri/README.md, "Deadlines", for what each RPC does then).

use std::future::Future;
use std::pin::{Pin, pin};
use std::task::{Context, Poll};
use std::time::Duration;

use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

/// The header a gRPC client sends its remaining time in.
pub const GRPC_TIMEOUT: &str = "grpc-timeout";

/// Parses a `grpc-timeout` value as the gRPC over HTTP/2 spec writes it: at most 8
/// ASCII digits, then one unit, `H`ours, `M`inutes, `S`econds, `m`illiseconds,
/// `u` (microseconds) or `n`anoseconds.
pub fn parse_grpc_timeout(value: &[u8]) -> Result<Duration, String> {
    let shown = || String::from_utf8_lossy(value).into_owned();
    let Some((&unit, digits)) = value.split_last() else {
        return Err("empty value".into());
    };
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(format!("{:?}: expected 1 to 8 digits and a unit", shown()));
    }
    // At most 8 digits: no overflow, in u64 or in Duration.
    let n: u64 = digits.iter().fold(0, |n, d| n * 10 + u64::from(d - b'0'));
    Ok(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return Err(format!("{:?}: unknown unit", shown())),
    })
}

/// Takes the `grpc-timeout` header off `headers` and returns the time it gives
/// (`Ok(None)` without one). More than one value is refused, as is a malformed one.
pub fn take_timeout(headers: &mut http::HeaderMap) -> Result<Option<Duration>, String> {
    let values: Vec<_> = headers.get_all(GRPC_TIMEOUT).iter().cloned().collect();
    headers.remove(GRPC_TIMEOUT);
    let value = match values.as_slice() {
        [] => return Ok(None),
        [value] => value,
        _ => return Err(format!("{} values", values.len())),
    };
    parse_grpc_timeout(value.as_bytes()).map(Some)
}

/// Runs `fut` until `deadline`: `None` when the deadline passed first, and then `fut`
/// has been dropped by the time this returns.
pub async fn within<F: Future>(fut: F, deadline: Instant) -> Option<F::Output> {
    let mut fut = pin!(fut);
    let mut sleep = pin!(tokio::time::sleep_until(deadline));
    std::future::poll_fn(|cx| {
        if let Poll::Ready(out) = fut.as_mut().poll(cx) {
            return Poll::Ready(Some(out));
        }
        // The clock, not only the timer: tonic's timer for the same deadline
        // may fire first and wake this task before this one's timer has.
        if sleep.as_mut().poll(cx).is_ready() || Instant::now() >= deadline {
            return Poll::Ready(None);
        }
        Poll::Pending
    })
    .await
}

/// A response body bounded by the call's deadline. A response that is still being
/// sent when the deadline passes (a GetContainerEvents stream, the rare unary answer
/// the client is slow to read) ends there: the rest of the body is dropped and the
/// trailers carry `grpc-status` DeadlineExceeded, as grpc-go ends a stream.
#[derive(Default)]
pub enum DeadlineBody<B> {
    /// No deadline.
    Unbounded(B),
    Bounded {
        inner: Option<B>,
        sleep: Pin<Box<Sleep>>,
        deadline: Instant,
        /// The trailers to send once the deadline passed.
        expired: Option<http::HeaderMap>,
        on_expiry: Option<Box<dyn FnOnce() + Send>>,
    },
    /// A trailers-only response: everything is in the headers.
    #[default]
    Empty,
}

impl<B> DeadlineBody<B> {
    /// `inner`, ended with `trailers` at `deadline`; `on_expiry` runs if it is.
    pub fn bounded(
        inner: B,
        deadline: Instant,
        trailers: http::HeaderMap,
        on_expiry: Box<dyn FnOnce() + Send>,
    ) -> Self {
        DeadlineBody::Bounded {
            inner: Some(inner),
            sleep: Box::pin(tokio::time::sleep_until(deadline)),
            deadline,
            expired: Some(trailers),
            on_expiry: Some(on_expiry),
        }
    }
}

impl<B> Body for DeadlineBody<B>
where
    B: Body + Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        match self.get_mut() {
            DeadlineBody::Unbounded(b) => Pin::new(b).poll_frame(cx),
            DeadlineBody::Empty => Poll::Ready(None),
            DeadlineBody::Bounded {
                inner,
                sleep,
                deadline,
                expired,
                on_expiry,
            } => {
                if let Some(b) = inner {
                    match Pin::new(&mut *b).poll_frame(cx) {
                        Poll::Ready(None) => {
                            // Ended by itself: nothing more to add.
                            *inner = None;
                            *expired = None;
                            return Poll::Ready(None);
                        }
                        Poll::Ready(Some(frame)) => return Poll::Ready(Some(frame)),
                        Poll::Pending => {
                            if sleep.as_mut().poll(cx).is_pending() && Instant::now() < *deadline {
                                return Poll::Pending;
                            }
                            *inner = None;
                        }
                    }
                }
                if let Some(f) = on_expiry.take() {
                    f();
                }
                Poll::Ready(expired.take().map(|t| Ok(Frame::trailers(t))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            DeadlineBody::Unbounded(b) => b.is_end_stream(),
            DeadlineBody::Empty => true,
            // A trailers-only answer must stay one: its headers then end the
            // stream (END_STREAM), which is what makes them trailers to grpc-go.
            DeadlineBody::Bounded { inner, expired, .. } => match inner {
                Some(b) => b.is_end_stream(),
                None => expired.is_none(),
            },
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            DeadlineBody::Unbounded(b) => b.size_hint(),
            DeadlineBody::Empty => SizeHint::with_exact(0),
            // May end early: no promise of a length.
            DeadlineBody::Bounded { .. } => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit() {
        let p = |s: &str| parse_grpc_timeout(s.as_bytes());
        assert_eq!(p("3H"), Ok(Duration::from_secs(3 * 3600)));
        assert_eq!(p("2M"), Ok(Duration::from_secs(120)));
        assert_eq!(p("1S"), Ok(Duration::from_secs(1)));
        assert_eq!(p("999m"), Ok(Duration::from_millis(999)));
        assert_eq!(p("5u"), Ok(Duration::from_micros(5)));
        assert_eq!(p("7n"), Ok(Duration::from_nanos(7)));
        assert_eq!(p("0S"), Ok(Duration::ZERO));
        assert_eq!(p("99999999H"), Ok(Duration::from_secs(99_999_999 * 3600)));
        // Leading zeros are digits like any other.
        assert_eq!(p("00000010m"), Ok(Duration::from_millis(10)));
    }

    #[test]
    fn refuses_malformed_values() {
        for bad in [
            "",
            "S",
            "1",
            "10",
            "1s",
            "1 S",
            " 1S",
            "-1S",
            "+1S",
            "1.5S",
            "123456789S",
            "1SS",
            "1h",
            "١S",
        ] {
            assert!(
                parse_grpc_timeout(bad.as_bytes()).is_err(),
                "{bad:?} was accepted"
            );
        }
    }

    #[test]
    fn takes_the_header_off() {
        let mut h = http::HeaderMap::new();
        assert_eq!(take_timeout(&mut h), Ok(None));
        h.insert(GRPC_TIMEOUT, http::HeaderValue::from_static("2S"));
        assert_eq!(take_timeout(&mut h), Ok(Some(Duration::from_secs(2))));
        assert!(h.get(GRPC_TIMEOUT).is_none());

        h.append(GRPC_TIMEOUT, http::HeaderValue::from_static("2S"));
        h.append(GRPC_TIMEOUT, http::HeaderValue::from_static("1S"));
        assert!(take_timeout(&mut h).is_err());
        h.insert(GRPC_TIMEOUT, http::HeaderValue::from_static("soon"));
        assert!(take_timeout(&mut h).is_err());
    }

    #[tokio::test]
    async fn within_drops_a_late_future() {
        struct Flag(std::sync::Arc<std::sync::atomic::AtomicBool>);
        impl Drop for Flag {
            fn drop(&mut self) {
                self.0.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
        let dropped = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = Flag(dropped.clone());
        let slow = async move {
            let _flag = flag;
            tokio::time::sleep(Duration::from_secs(30)).await;
        };
        let t = Instant::now();
        let got = within(slow, Instant::now() + Duration::from_millis(50)).await;
        assert!(got.is_none());
        assert!(dropped.load(std::sync::atomic::Ordering::SeqCst));
        assert!(t.elapsed() < Duration::from_secs(5));

        let quick = within(async { 7 }, Instant::now() + Duration::from_secs(5)).await;
        assert_eq!(quick, Some(7));
    }
}

/// Property-based fuzzing of `grpc-timeout` parsing (docs/testing.md,
/// "Fuzzing"); `PROPTEST_CASES` overrides the bounded number of cases.
#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    fn config(cases: u32) -> ProptestConfig {
        ProptestConfig {
            cases: std::env::var("PROPTEST_CASES")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(cases),
            failure_persistence: None,
            ..ProptestConfig::default()
        }
    }

    proptest! {
        #![proptest_config(config(3000))]

        #[test]
        fn arbitrary_values(v in prop::collection::vec(any::<u8>(), 0..12)) {
            let _ = parse_grpc_timeout(&v);
        }

        #[test]
        fn well_formed_values(n in 0u64..100_000_000, unit in prop::sample::select(&b"HMSmun"[..])) {
            let v = format!("{n}{}", unit as char);
            let d = parse_grpc_timeout(v.as_bytes()).unwrap();
            let want = match unit {
                b'H' => Duration::from_secs(n * 3600),
                b'M' => Duration::from_secs(n * 60),
                b'S' => Duration::from_secs(n),
                b'm' => Duration::from_millis(n),
                b'u' => Duration::from_micros(n),
                _ => Duration::from_nanos(n),
            };
            prop_assert_eq!(d, want);
        }

        #[test]
        fn nine_digits_are_refused(n in 100_000_000u64..1_000_000_000, unit in prop::sample::select(&b"HMSmun"[..])) {
            let v = format!("{n}{}", unit as char);
            prop_assert!(parse_grpc_timeout(v.as_bytes()).is_err());
        }
    }
}
