//! `protolake gateway`: the gRPC front door. Every method routed in the config is served from
//! the table's descriptor set alone (a codec of raw bytes; no generated code), each request is
//! checked by the sink's own pipeline (size, `buf.validate` rules, decoding under the pinned
//! contract, NOT NULL, event time), and accepted records are published to the table's topic by
//! an idempotent producer with `acks=all`. A call is answered only after the broker acknowledged
//! its records; a refused record never reaches the topic.
//!
//! Alongside: gRPC server reflection from the descriptor sets, the standard health service
//! (serving while the producer reaches the brokers), gzip, deadlines, per-route bearer tokens,
//! the Connect protocol's unary JSON form on the same paths (`POST /pkg.Service/Method`,
//! `Content-Type: application/json`), Prometheus metrics, and a drain on SIGTERM.

mod acks;
mod check;
mod direct;
mod json;
mod reply;

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use prost_reflect::DescriptorPool;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryFuture, FutureProducer, FutureRecord, Producer, ThreadedProducer};

use acks::{StreamContext, StreamSlots};
use tonic::codec::{CompressionEncoding, DecodeBuf, EncodeBuf};
use tonic::metadata::MetadataMap;
use tonic::server::{ClientStreamingService, Grpc, UnaryService};
use tonic::{Code, Status, Streaming};
use tonic_health::ServingStatus;

use crate::config::{GatewayConfig, KafkaConfig, RouteConfig, TableConfig, Tokens};
use crate::contract::Contract;
use crate::decode::Decoder;
use crate::metrics::GatewayMetrics;
use crate::pipeline::TablePipeline;
use crate::source::kafka::producer_config;
use crate::validate::{RecordValidator, Violation};

use check::Checkers;
pub use check::{describe, refusal_status, KeyReader, RefusalContext};
use reply::Reply;

/// One route, ready to serve: the table's checks and where its records go.
pub struct RouteSetup {
    pub route: RouteConfig,
    pub table: TableConfig,
    /// The table's encoded descriptor set (it holds the service as well as the message).
    pub descriptor_set: Vec<u8>,
    pub decoder: Decoder,
    pub validator: Option<RecordValidator>,
    /// The pinned contract and its version (None: ad-hoc).
    pub contract: Option<(u32, Contract)>,
    /// The bearer tokens of `route.tokens_env` (None: the route is open).
    pub tokens: Option<Tokens>,
}

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("route {method}: {reason}")]
    Route { method: String, reason: String },
    #[error("cannot listen on {address}: {cause}")]
    Listen { address: String, cause: std::io::Error },
    #[error("gateway.tls_cert / tls_key: {0}")]
    Tls(String),
    #[error("the Kafka producer: {0}")]
    Kafka(#[from] KafkaError),
    #[error("server reflection: {0}")]
    Reflection(String),
    #[error("the gRPC server stopped: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// Refused events a stream's answer lists at most (the first ones; `protolake-refused` counts
/// them all): a client's default message limit is 4 MiB, and a stream refused by the thousand is
/// a producer to fix, not to read event by event.
const MAX_REFUSALS_LISTED: usize = 1000;

/// HTTP/2 flow-control windows (see `serve`).
const STREAM_WINDOW: u32 = 256 * 1024;
const CONNECTION_WINDOW: u32 = 64 * STREAM_WINDOW;

/// Where a method's accepted records go.
enum Target {
    /// The table's topic, through the producer.
    Topic(String),
    /// Straight into the table (direct mode: the table has no topic).
    Direct(Arc<direct::DirectSink>),
}

/// One served method.
struct Method {
    /// `package.Service/Method`.
    name: String,
    service: String,
    table: String,
    target: Target,
    message: String,
    client_streaming: bool,
    tokens: Option<Vec<String>>,
    contract_version: Option<u32>,
    checkers: Arc<Checkers>,
    key: Option<KeyReader>,
    reply: Reply,
    input: prost_reflect::MessageDescriptor,
    /// This method's table's accepted-records counter, looked up once.
    accepted: prometheus_client::metrics::counter::Counter,
}

impl Method {
    fn refusal(&self, violations: &[Violation]) -> Status {
        let context =
            RefusalContext { message: &self.message, table: &self.table, contract_version: self.contract_version };
        refusal_status(&context, violations)
    }
}

/// The gateway's producers: one for unary calls, one for streams (they differ in `linger.ms`,
/// and a stream's records are counted as they are acknowledged, not awaited one by one).
struct Producers {
    calls: FutureProducer,
    streams: ThreadedProducer<StreamContext>,
    /// The streams publishing through `streams`, whose delivery reports they count.
    slots: Arc<StreamSlots>,
}

/// The producer settings of the gateway: an idempotent `acks=all` producer with the `[kafka]`
/// connection properties; `linger_ms` and the Java clients' partitioner unless the properties
/// set them.
fn producer_settings(
    kafka: &KafkaConfig,
    config: &GatewayConfig,
    client_id: &str,
    linger_ms: &str,
) -> rdkafka::ClientConfig {
    let mut producer = producer_config(kafka);
    if !kafka.properties.contains_key("linger.ms") && !kafka.properties.contains_key("queue.buffering.max.ms") {
        producer.set("linger.ms", linger_ms);
    }
    // Keys go to the partitions the Java clients (Kafka Streams, Connect) choose for them, with
    // a hash cheaper per record than librdkafka's default CRC-32 (zlib's, on the key).
    if !kafka.properties.contains_key("partitioner") {
        producer.set("partitioner", "murmur2_random");
    }
    producer
        .set("client.id", client_id)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", config.produce_timeout.as_millis().max(1).to_string())
        .set("queue.buffering.max.messages", config.max_in_flight.to_string());
    producer
}

/// What every call shares.
struct Shared {
    /// None when every route writes its table directly.
    producer: Option<Producers>,
    metrics: Arc<GatewayMetrics>,
    /// Every route's tokens: a token of another route is PERMISSION_DENIED, not UNAUTHENTICATED.
    all_tokens: Vec<String>,
    max_message_bytes: usize,
    produce_timeout: Duration,
}

/// A bound gateway, not yet serving.
pub struct Gateway {
    listener: tokio::net::TcpListener,
    methods: Vec<Arc<Method>>,
    shared: Arc<Shared>,
    descriptor_sets: Vec<Vec<u8>>,
    tls: Option<(Vec<u8>, Vec<u8>)>,
    drain_timeout: Duration,
    probe_topic: String,
}

/// How a served gateway ended.
#[derive(Debug, Default)]
pub struct GatewayReport {
    pub accepted: u64,
    pub refused: u64,
    /// Records still unacknowledged when the drain timed out (0 after a clean drain).
    pub unflushed: u64,
}

impl Gateway {
    /// Checks every route against its descriptor, connects the producer and binds `listen`.
    pub async fn bind(
        setups: Vec<RouteSetup>,
        config: &GatewayConfig,
        kafka: &KafkaConfig,
        metrics: Arc<GatewayMetrics>,
    ) -> Result<Gateway, GatewayError> {
        let mut methods = Vec::new();
        let mut descriptor_sets: Vec<Vec<u8>> = Vec::new();
        let mut all_tokens = BTreeSet::new();
        let mut sinks: Vec<Arc<direct::DirectSink>> = Vec::new();
        for setup in setups {
            if !descriptor_sets.contains(&setup.descriptor_set) {
                descriptor_sets.push(setup.descriptor_set.clone());
            }
            if let Some(t) = &setup.tokens {
                all_tokens.extend(t.values.iter().cloned());
            }
            // Direct mode's table is opened (created, if need be) only for a route that checks out.
            let err = |reason: String| GatewayError::Route { method: setup.route.method.clone(), reason };
            let direct = match &setup.table.topic {
                Some(_) => None,
                None => {
                    // The records are checked before they reach it: no second rule check.
                    let pipeline = TablePipeline::new(
                        setup.decoder.fresh().map_err(|e| err(e.to_string()))?,
                        setup.contract.as_ref().map(|(_, c)| c),
                        setup.table.event_time.as_ref(),
                        setup.table.max_record_bytes,
                    )
                    .map_err(|e| err(e.to_string()))?
                    .with_header_columns(&setup.table.header_columns);
                    Some((pipeline, setup.table.clone(), setup.contract.clone()))
                }
            };
            let topic = setup.table.topic.clone().unwrap_or_default();
            let mut served = method(setup, Target::Topic(topic), &metrics)?;
            if let Some((pipeline, table, contract)) = direct {
                let sink = match sinks.iter().find(|s| s.table == table.name) {
                    Some(sink) => sink.clone(),
                    None => {
                        let sink =
                            direct::DirectSink::open(&table, pipeline, contract.as_ref()).await.map_err(|e| {
                                GatewayError::Route {
                                    method: served.name.clone(),
                                    reason: format!("table {}: {e}", table.name),
                                }
                            })?;
                        sinks.push(sink.clone());
                        sink
                    }
                };
                served.target = Target::Direct(sink);
            }
            methods.push(Arc::new(served));
        }
        let producer = if methods.iter().any(|m| matches!(m.target, Target::Topic(_))) {
            let slots = Arc::new(StreamSlots::default());
            // A unary call waits for its record's batch: librdkafka's default of 5 ms would be
            // most of its answer time. A stream's events fill batches, and larger ones cost the
            // producer less per record (at 1 ms it spent a quarter more CPU per streamed event).
            Some(Producers {
                calls: producer_settings(kafka, config, "protolake-gateway", "1").create()?,
                streams: producer_settings(kafka, config, "protolake-gateway-streams", "5")
                    .create_with_context(StreamContext { slots: slots.clone() })?,
                slots,
            })
        } else {
            None
        };
        let tls = match &config.tls {
            None => None,
            Some((cert, key)) => {
                let read = |p: &std::path::Path| {
                    std::fs::read(p).map_err(|e| GatewayError::Tls(format!("cannot read {}: {e}", p.display())))
                };
                Some((read(cert)?, read(key)?))
            }
        };
        let listener = tokio::net::TcpListener::bind(&config.listen)
            .await
            .map_err(|cause| GatewayError::Listen { address: config.listen.clone(), cause })?;
        let probe_topic = methods
            .iter()
            .find_map(|m| match &m.target {
                Target::Topic(t) => Some(t.clone()),
                Target::Direct(_) => None,
            })
            .unwrap_or_default();
        Ok(Gateway {
            listener,
            shared: Arc::new(Shared {
                producer,
                metrics,
                all_tokens: all_tokens.into_iter().collect(),
                max_message_bytes: config.max_message_bytes,
                produce_timeout: config.produce_timeout,
            }),
            methods,
            descriptor_sets,
            tls,
            drain_timeout: config.drain_timeout,
            probe_topic,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The methods served, `package.Service/Method`.
    pub fn methods(&self) -> Vec<String> {
        self.methods.iter().map(|m| m.name.clone()).collect()
    }

    /// Serves until `stop` resolves, then drains: stops accepting, lets the calls in flight
    /// finish (up to `drain_timeout`) and flushes the producer.
    pub async fn serve(self, stop: impl Future<Output = ()> + Send + 'static) -> Result<GatewayReport, GatewayError> {
        let (reporter, health_service) = tonic_health::server::health_reporter();
        let services: BTreeSet<String> = self.methods.iter().map(|m| m.service.clone()).collect();
        let mut reflection = tonic_reflection::server::Builder::configure();
        for set in &self.descriptor_sets {
            reflection = reflection.register_encoded_file_descriptor_set(set);
        }
        let reflection_v1 = reflection.build_v1().map_err(|e| GatewayError::Reflection(e.to_string()))?;
        let mut reflection = tonic_reflection::server::Builder::configure();
        for set in &self.descriptor_sets {
            reflection = reflection.register_encoded_file_descriptor_set(set);
        }
        let reflection_v1alpha = reflection.build_v1alpha().map_err(|e| GatewayError::Reflection(e.to_string()))?;

        let mut router = tonic::service::Routes::default().into_axum_router();
        for m in &self.methods {
            let service = MethodService { method: m.clone(), shared: self.shared.clone() };
            router = router.route_service(&format!("/{}", m.name), service);
        }
        let routes = tonic::service::Routes::from(router)
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha);

        // Health follows the producer's view of the brokers.
        let stopping = Arc::new(AtomicBool::new(false));
        let probe = {
            let shared = self.shared.clone();
            let reporter = reporter.clone();
            let stopping = stopping.clone();
            let topic = self.probe_topic.clone();
            let services = services.clone();
            tokio::spawn(async move {
                let mut last = None;
                loop {
                    let reachable = if stopping.load(Ordering::SeqCst) {
                        false
                    } else if let Some(producer) = shared.producer.as_ref().map(|p| p.calls.clone()) {
                        let topic = topic.clone();
                        // Serving: the brokers answer and know the topic (a record for a topic they
                        // do not have would only time out).
                        tokio::task::spawn_blocking(move || {
                            producer.client().fetch_metadata(Some(&topic), Duration::from_secs(2)).is_ok_and(|m| {
                                m.topics()
                                    .iter()
                                    .any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty())
                            })
                        })
                        .await
                        .unwrap_or(false)
                    } else {
                        // Direct mode only: nothing to reach but the tables, which each call reaches.
                        true
                    };
                    if last != Some(reachable) {
                        let status = if reachable { ServingStatus::Serving } else { ServingStatus::NotServing };
                        reporter.set_service_status("", status).await;
                        for s in &services {
                            reporter.set_service_status(s, status).await;
                        }
                        shared.metrics.broker_reachable.set(i64::from(reachable));
                        if reachable {
                            tracing::info!("the brokers answer: serving");
                        } else if !stopping.load(Ordering::SeqCst) {
                            tracing::warn!("the brokers do not answer: health is NOT_SERVING");
                        }
                        last = Some(reachable);
                    }
                    if stopping.load(Ordering::SeqCst) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            })
        };

        // h2 closes a connection (ENHANCE_YOUR_CALM, "too_many_data_frames") whose buffered
        // small DATA frames cost more framing than half the connection window: a client
        // streaming ~100-byte events faster than a call checks them fills its stream window with
        // such frames. A stream window a sixty-fourth of the connection window keeps that
        // overhead under the budget for a dozen lagging streams of one connection (at ~85 bytes
        // an event a full stream window costs about twice its size in framing).
        let mut builder = tonic::transport::Server::builder()
            .accept_http1(true)
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW);
        if let Some((cert, key)) = &self.tls {
            // Two crypto providers are compiled in (ring, aws-lc-rs): rustls takes neither
            // unless told. Another part of the process may have chosen already.
            let _ = rustls::crypto::ring::default_provider().install_default();
            let identity = tonic::transport::Identity::from_pem(cert, key);
            builder = builder
                .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
                .map_err(|e| GatewayError::Tls(e.to_string()))?;
        }
        let (signalled_tx, signalled_rx) = tokio::sync::oneshot::channel::<()>();
        let stop_flag = stopping.clone();
        let shutdown = async move {
            stop.await;
            stop_flag.store(true, Ordering::SeqCst);
            tracing::info!("draining: no new calls; finishing the calls in flight");
            let _ = signalled_tx.send(());
        };
        // A listener handed over keeps Nagle's algorithm unless told: with it, an answer waits for
        // the client's delayed ACK (40 ms) now and then.
        let incoming = tonic::transport::server::TcpIncoming::from(self.listener).with_nodelay(Some(true));
        let server = builder.add_routes(routes).serve_with_incoming_shutdown(incoming, shutdown);
        tokio::pin!(server);
        let drain_timeout = self.drain_timeout;
        let served = tokio::select! {
            r = &mut server => r,
            _ = async {
                let _ = signalled_rx.await;
                tokio::time::sleep(drain_timeout).await;
            } => {
                tracing::warn!(?drain_timeout, "calls still in flight after the drain timeout; stopping them");
                Ok(())
            }
        };
        stopping.store(true, Ordering::SeqCst);
        let _ = probe.await;
        // Whatever was handed to the producer is delivered (or times out) before the exit.
        let mut unflushed = 0;
        if let Some(producers) = &self.shared.producer {
            let calls = producers.calls.clone();
            let streams = producers.streams.clone();
            let flushed = tokio::task::spawn_blocking(move || {
                let unflushed = |flushed: rdkafka::error::KafkaResult<()>, in_flight: i32| match flushed {
                    Ok(()) => 0,
                    Err(_) => in_flight.max(0) as u64,
                };
                unflushed(calls.flush(drain_timeout), calls.in_flight_count())
                    + unflushed(streams.flush(drain_timeout), streams.in_flight_count())
            })
            .await;
            unflushed += flushed.unwrap_or(0);
        }
        served?;
        Ok(GatewayReport {
            accepted: self.shared.metrics.accepted_total(),
            refused: self.shared.metrics.refused_total(),
            unflushed,
        })
    }
}

fn method(setup: RouteSetup, target: Target, metrics: &GatewayMetrics) -> Result<Method, GatewayError> {
    let name = setup.route.method.clone();
    let err = |reason: String| GatewayError::Route { method: name.clone(), reason };
    let pool = DescriptorPool::decode(setup.descriptor_set.as_slice()).map_err(|e| err(e.to_string()))?;
    let (service_name, method_name) = name.split_once('/').expect("config checked the method's form");
    let service = pool.get_service_by_name(service_name).ok_or_else(|| {
        let known: Vec<String> = pool.services().map(|s| s.full_name().to_string()).collect();
        err(format!(
            "table {}'s descriptor has no service {service_name}; its services: {}",
            setup.table.name,
            if known.is_empty() { "none".into() } else { known.join(", ") }
        ))
    })?;
    let descriptor = service.methods().find(|m| m.name() == method_name).ok_or_else(|| {
        let known: Vec<String> = service.methods().map(|m| m.name().to_string()).collect();
        err(format!("{service_name} has no method {method_name}; its methods: {}", known.join(", ")))
    })?;
    if descriptor.is_server_streaming() {
        return Err(err("streams responses; the gateway serves unary and client-streaming methods".into()));
    }
    let input = descriptor.input();
    let table_message = setup.table.message.trim_start_matches('.');
    if input.full_name() != table_message {
        return Err(err(format!(
            "takes {}, and table {} holds {table_message}; route the method to a table of its message",
            input.full_name(),
            setup.table.name
        )));
    }
    let client_streaming = descriptor.is_client_streaming();
    let reply = Reply::for_method(descriptor.output(), client_streaming).map_err(err)?;
    let key = KeyReader::new(&input, &setup.table.key).map_err(err)?;
    let contract = setup.contract.as_ref().map(|(_, c)| c.clone());
    let first = TablePipeline::new(
        setup.decoder.fresh().map_err(|e| err(e.to_string()))?,
        contract.as_ref(),
        setup.table.event_time.as_ref(),
        setup.table.max_record_bytes,
    )
    .map_err(|e| err(e.to_string()))?
    .with_validator(setup.validator.as_ref().map(|v| v.fresh()));
    let (decoder, validator, table) = (setup.decoder, setup.validator, setup.table.clone());
    let make = Box::new(move || {
        let pipeline = TablePipeline::new(
            decoder.fresh().ok()?,
            contract.as_ref(),
            table.event_time.as_ref(),
            table.max_record_bytes,
        )
        .ok()?;
        Some(pipeline.with_validator(validator.as_ref().map(|v| v.fresh())))
    });
    Ok(Method {
        service: service_name.to_string(),
        table: setup.table.name.clone(),
        target,
        message: input.full_name().to_string(),
        client_streaming,
        tokens: setup.tokens.as_ref().map(|t| t.values.clone()),
        contract_version: setup.contract.as_ref().map(|(v, _)| *v),
        checkers: Arc::new(Checkers::new(first, make)),
        key,
        reply,
        accepted: metrics.accepted_counter(&setup.table.name),
        input,
        name,
    })
}

// --- the codec ---------------------------------------------------------------------------------

/// Messages pass as their wire bytes: the gateway reads them with the table's own decoder. Also
/// a client's codec for callers holding encoded messages (the quickstart, the bench).
#[derive(Clone, Copy, Debug, Default)]
pub struct RawCodec;

pub struct RawEncoder;
pub struct RawDecoder;

impl tonic::codec::Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

impl tonic::codec::Encoder for RawEncoder {
    type Item = Bytes;
    type Error = Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        bytes::BufMut::put(dst, item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawDecoder {
    type Item = Bytes;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        let n = bytes::Buf::remaining(src);
        Ok(Some(bytes::Buf::copy_to_bytes(src, n)))
    }
}

// --- the service of one method -----------------------------------------------------------------

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

#[derive(Clone)]
struct MethodService {
    method: Arc<Method>,
    shared: Arc<Shared>,
}

impl tower_service::Service<http::Request<axum::body::Body>> for MethodService {
    type Response = axum::response::Response;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<axum::body::Body>) -> Self::Future {
        use axum::response::IntoResponse;
        let (method, shared) = (self.method.clone(), self.shared.clone());
        Box::pin(async move {
            let content_type =
                request.headers().get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
            if !content_type.starts_with("application/grpc") {
                return Ok(json::serve(method, shared, request).await);
            }
            let mut grpc = Grpc::new(RawCodec)
                .accept_compressed(CompressionEncoding::Gzip)
                .send_compressed(CompressionEncoding::Gzip)
                .max_decoding_message_size(shared.max_message_bytes);
            let response = if method.client_streaming {
                grpc.client_streaming(StreamCall { method, shared: shared.clone() }, request).await
            } else {
                grpc.unary(UnaryCall { method, shared: shared.clone() }, request).await
            };
            Ok(size_limit_is_resource_exhausted(response, shared.max_message_bytes).into_response())
        })
    }
}

/// tonic answers a request message over the limit with OUT_OF_RANGE; gRPC's own servers (and
/// clients' retry policies) use RESOURCE_EXHAUSTED for it.
fn size_limit_is_resource_exhausted(
    mut response: http::Response<tonic::body::Body>,
    limit: usize,
) -> http::Response<tonic::body::Body> {
    let headers = response.headers_mut();
    let out_of_range = headers.get("grpc-status").is_some_and(|v| v.as_bytes() == b"11");
    let too_large = headers
        .get("grpc-message")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|m| m.contains("too%20large") || m.contains("too large"));
    if out_of_range && too_large {
        headers.insert("grpc-status", http::HeaderValue::from_static("8"));
        let message = format!("the request message is over gateway.max_message_bytes ({limit} bytes)");
        if let Ok(v) = http::HeaderValue::from_str(&percent_encode(&message)) {
            headers.insert("grpc-message", v);
        }
    }
    response
}

fn percent_encode(text: &str) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

struct UnaryCall {
    method: Arc<Method>,
    shared: Arc<Shared>,
}

impl UnaryService<Bytes> for UnaryCall {
    type Response = Bytes;
    type Future = BoxFuture<Result<tonic::Response<Bytes>, Status>>;

    fn call(&mut self, request: tonic::Request<Bytes>) -> Self::Future {
        let (method, shared) = (self.method.clone(), self.shared.clone());
        Box::pin(async move {
            let deadline = deadline_of(request.metadata());
            observed(&method, &shared, deadline, unary(&method, &shared, request)).await
        })
    }
}

struct StreamCall {
    method: Arc<Method>,
    shared: Arc<Shared>,
}

impl ClientStreamingService<Bytes> for StreamCall {
    type Response = Bytes;
    type Future = BoxFuture<Result<tonic::Response<Bytes>, Status>>;

    fn call(&mut self, request: tonic::Request<Streaming<Bytes>>) -> Self::Future {
        let (method, shared) = (self.method.clone(), self.shared.clone());
        Box::pin(async move {
            let deadline = deadline_of(request.metadata());
            observed(&method, &shared, deadline, stream(&method, &shared, request)).await
        })
    }
}

/// A gRPC call's work under its deadline, counted and timed in the metrics.
async fn observed<T>(
    method: &Method,
    shared: &Shared,
    deadline: Option<Duration>,
    work: impl Future<Output = Result<T, Status>>,
) -> Result<T, Status> {
    let started = Instant::now();
    let result = with_deadline(deadline, work).await;
    shared.metrics.observe_call(&method.name, result.as_ref().err().map_or(Code::Ok, Status::code), started);
    result
}

/// The client's deadline (`grpc-timeout`), less a margin so the answer is DEADLINE_EXCEEDED
/// from here rather than the transport's CANCELLED.
fn deadline_of(metadata: &MetadataMap) -> Option<Duration> {
    let text = metadata.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = text.split_at(text.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    let d = match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    };
    Some(d.saturating_sub(Duration::from_millis(2)))
}

async fn with_deadline<T>(
    deadline: Option<Duration>,
    work: impl Future<Output = Result<T, Status>>,
) -> Result<T, Status> {
    match deadline {
        None => work.await,
        Some(d) => tokio::time::timeout(d, work).await.unwrap_or_else(|_| {
            Err(Status::deadline_exceeded(
                "the call's deadline passed before the broker acknowledged its records; a record handed to the \
                 producer may still be published (retry with the same idempotency-key)",
            ))
        }),
    }
}

/// Bearer-token check of a route with tokens.
fn authorize(method: &Method, shared: &Shared, metadata: &MetadataMap) -> Result<(), Status> {
    let Some(tokens) = &method.tokens else { return Ok(()) };
    let given = metadata
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim);
    let Some(given) = given else {
        return Err(Status::unauthenticated(format!(
            "{} needs a bearer token: send the metadata `authorization: Bearer <token>`",
            method.name
        )));
    };
    if tokens.iter().any(|t| same_secret(t, given)) {
        return Ok(());
    }
    if shared.all_tokens.iter().any(|t| same_secret(t, given)) {
        return Err(Status::permission_denied(format!("this token is not allowed to call {}", method.name)));
    }
    Err(Status::unauthenticated(format!("the bearer token is not one {} accepts", method.name)))
}

/// Compares without stopping at the first differing byte.
fn same_secret(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn idempotency_key(metadata: &MetadataMap) -> Option<String> {
    metadata.get("idempotency-key").and_then(|v| v.to_str().ok()).map(str::to_string)
}

/// The Kafka headers of one record.
fn headers(idempotency: Option<&str>, stream_index: Option<u64>) -> Option<OwnedHeaders> {
    if idempotency.is_none() && stream_index.is_none() {
        return None;
    }
    let mut h = OwnedHeaders::new();
    if let Some(key) = idempotency {
        h = h.insert(Header { key: "idempotency-key", value: Some(key) });
    }
    if let Some(i) = stream_index {
        let text = i.to_string();
        h = h.insert(Header { key: "protolake-stream-index", value: Some(&text) });
    }
    Some(h)
}

impl Shared {
    /// Hands one record of a unary call to the producer of calls.
    fn send(&self, method: &Method, bytes: &[u8], headers: Option<OwnedHeaders>) -> Result<DeliveryFuture, KafkaError> {
        let (Target::Topic(topic), Some(producers)) = (&method.target, &self.producer) else {
            return Err(KafkaError::MessageProduction(RDKafkaErrorCode::InvalidArgument));
        };
        let key = method.key.as_ref().map(|k| k.read(bytes));
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic).payload(bytes);
        if let Some(k) = &key {
            record = record.key(k.as_slice());
        }
        if let Some(h) = headers {
            record = record.headers(h);
        }
        producers.calls.send_result(record).map_err(|(e, _)| e)
    }

    /// Hands one event of a stream to the producer of streams; its delivery report is
    /// counted in the stream's slot. `key` is a buffer for the record's key.
    fn send_event(
        &self,
        method: &Method,
        bytes: &[u8],
        headers: Option<OwnedHeaders>,
        stream: &mut acks::Stream,
        index: u64,
        key: &mut Vec<u8>,
    ) -> Result<(), KafkaError> {
        let (Target::Topic(topic), Some(producers)) = (&method.target, &self.producer) else {
            return Err(KafkaError::MessageProduction(RDKafkaErrorCode::InvalidArgument));
        };
        let mut record: BaseRecord<'_, [u8], [u8], usize> =
            BaseRecord::with_opaque_to(topic, stream.opaque(index)).payload(bytes);
        if let Some(k) = &method.key {
            k.read_into(bytes, key);
            record = record.key(key.as_slice());
        }
        if let Some(h) = headers {
            record = record.headers(h);
        }
        producers.streams.send(record).map_err(|(e, _)| e)?;
        stream.sent();
        Ok(())
    }

    /// Waits for the broker's acknowledgement of one record: (partition, offset).
    async fn settle(&self, method: &Method, delivery: DeliveryFuture) -> Result<(i32, i64), Status> {
        match delivery.await {
            Ok(Ok(d)) => Ok((d.partition, d.offset)),
            Ok(Err((e, _))) => Err(self.produce_error(method, &e)),
            Err(_) => Err(Status::unavailable("the producer stopped before the broker acknowledged the record")),
        }
    }

    fn produce_error(&self, method: &Method, e: &KafkaError) -> Status {
        let code = e.rdkafka_error_code();
        let topic = match &method.target {
            Target::Topic(t) => t.as_str(),
            Target::Direct(_) => "",
        };
        self.metrics.produce_error(&method.table, code.map_or_else(|| "other".to_string(), |c| format!("{c:?}")));
        match code {
            Some(RDKafkaErrorCode::QueueFull) => retry_status(
                Code::ResourceExhausted,
                "the gateway's produce queue is full (gateway.max_in_flight records await the broker); retry shortly"
                    .into(),
                Duration::from_millis(200),
            ),
            Some(RDKafkaErrorCode::MessageSizeTooLarge) => Status::resource_exhausted(format!(
                "the broker refuses a record this large for topic {topic} (its message.max.bytes): {e}"
            )),
            _ => retry_status(
                Code::Unavailable,
                format!(
                    "the broker did not acknowledge the record within gateway.produce_timeout ({:?}) for topic {topic}: {e}; \
                     it may or may not be in the topic: retry with the same idempotency-key (close-books keeps one \
                     row per key)",
                    self.produce_timeout
                ),
                Duration::from_secs(1),
            ),
        }
    }
}

/// A status carrying `google.rpc.RetryInfo`.
fn retry_status(code: Code, message: String, delay: Duration) -> Status {
    use prost::Message as _;
    let retry = tonic_types::pb::RetryInfo {
        retry_delay: Some(prost_types::Duration {
            seconds: delay.as_secs() as i64,
            nanos: delay.subsec_nanos() as i32,
        }),
    };
    let status = tonic_types::pb::Status {
        code: code as i32,
        message: message.clone(),
        details: vec![check::any("google.rpc.RetryInfo", retry.encode_to_vec())],
    };
    Status::with_details(code, message, status.encode_to_vec().into())
}

/// Checks one record: its Kafka key when it may be published, or the status refusing it.
fn check_one(method: &Method, shared: &Shared, checker: &mut check::CheckerGuard, bytes: &[u8]) -> Vec<Violation> {
    let violations = checker.check(bytes);
    if violations.is_empty() {
        method.accepted.inc();
        shared.metrics.accepted_record();
    } else {
        for v in &violations {
            shared.metrics.refused(&method.table, &v.rule);
        }
        shared.metrics.refused_record();
    }
    violations
}

async fn unary(
    method: &Method,
    shared: &Shared,
    request: tonic::Request<Bytes>,
) -> Result<tonic::Response<Bytes>, Status> {
    authorize(method, shared, request.metadata())?;
    let idempotency = idempotency_key(request.metadata());
    let bytes = request.into_inner();
    let violations = {
        let mut checker = method.checkers.take()?;
        check_one(method, shared, &mut checker, &bytes)
    };
    if !violations.is_empty() {
        return Err(method.refusal(&violations));
    }
    if let Target::Direct(sink) = &method.target {
        let version = sink.write(bytes, idempotency).await?;
        let mut response = tonic::Response::new(method.reply.direct());
        response.metadata_mut().insert("protolake-table-version", version.into());
        return Ok(response);
    }
    let delivery = shared
        .send(method, &bytes, headers(idempotency.as_deref(), None))
        .map_err(|e| shared.produce_error(method, &e))?;
    let (partition, offset) = shared.settle(method, delivery).await?;
    let mut response = tonic::Response::new(method.reply.unary(partition, offset));
    let md = response.metadata_mut();
    md.insert("protolake-partition", partition.into());
    md.insert("protolake-offset", offset.into());
    Ok(response)
}

/// A client stream: every event checked, the accepted ones published as they come (the
/// producer's queue bounds what waits), one answer after the last acknowledgement.
async fn stream(
    method: &Method,
    shared: &Shared,
    request: tonic::Request<Streaming<Bytes>>,
) -> Result<tonic::Response<Bytes>, Status> {
    authorize(method, shared, request.metadata())?;
    let idempotency = idempotency_key(request.metadata());
    let mut events = request.into_inner();
    let mut refused: Vec<(u64, Vec<Violation>)> = Vec::new();
    // A slot counting the stream's acknowledgements (a direct-mode route has no producer).
    let mut acks = match &shared.producer {
        Some(p) if matches!(method.target, Target::Topic(_)) => Some(
            p.slots
                .open()
                .ok_or_else(|| Status::resource_exhausted("too many streams publishing at once; retry shortly"))?,
        ),
        _ => None,
    };
    let mut key = Vec::new();
    let mut index = 0u64;
    let mut refused_count = 0u64;
    let mut checker = method.checkers.take()?;
    let mut committing = Vec::new();
    while let Some(bytes) = events.message().await? {
        let violations = check_one(method, shared, &mut checker, &bytes);
        if violations.is_empty() {
            let stream = match (&method.target, acks.as_mut()) {
                (Target::Direct(sink), _) => {
                    committing.push((index, sink.submit(bytes, idempotency.clone()).await?));
                    index += 1;
                    continue;
                }
                (Target::Topic(_), Some(stream)) => stream,
                (Target::Topic(_), None) => return Err(Status::internal("the gateway has no producer for this route")),
            };
            // An event's position travels with the idempotency key: the two name it.
            let position = idempotency.as_ref().map(|_| index);
            let mut full_since = None;
            let mut waited = false;
            loop {
                match shared.send_event(
                    method,
                    &bytes,
                    headers(idempotency.as_deref(), position),
                    stream,
                    index,
                    &mut key,
                ) {
                    Ok(()) => break,
                    // The queue is full: wait for a quarter of this stream's pending records
                    // to be acknowledged (retrying at each would spin on a full queue), or,
                    // none pending, for room, up to the produce timeout; then retry.
                    Err(e) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) => {
                        let pending = stream.pending();
                        waited = true;
                        if pending > 0 {
                            stream.pending_at_most(pending - (pending / 4).max(1)).await;
                            continue;
                        }
                        if full_since.get_or_insert_with(std::time::Instant::now).elapsed() > shared.produce_timeout {
                            return Err(at_event(shared.produce_error(method, &e), index));
                        }
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    Err(e) => return Err(at_event(shared.produce_error(method, &e), index)),
                }
            }
            // A failed record ends the call: looked for after each wait, and every 256 events
            // (its report may come long after its send).
            if waited || index.is_multiple_of(256) {
                if let Some((i, e)) = stream.failure() {
                    return Err(at_event(shared.produce_error(method, &e), i));
                }
            }
        } else {
            refused_count += 1;
            if refused.len() < MAX_REFUSALS_LISTED {
                refused.push((index, violations));
            }
        }
        index += 1;
    }
    drop(checker);
    let mut accepted = 0;
    if let Some(stream) = &acks {
        stream.pending_at_most(0).await;
        if let Some((i, e)) = stream.failure() {
            return Err(at_event(shared.produce_error(method, &e), i));
        }
        accepted = stream.acknowledged();
    }
    for (i, commit) in committing {
        direct::DirectSink::committed(commit).await.map_err(|s| at_event(s, i))?;
        accepted += 1;
    }
    let mut response = tonic::Response::new(method.reply.stream(accepted, &refused));
    let md = response.metadata_mut();
    md.insert("protolake-accepted", accepted.into());
    md.insert("protolake-refused", refused_count.into());
    Ok(response)
}

/// A stream's failure names the first event it concerns: the events before it that were
/// accepted are in the topic, those from it on may not be.
fn at_event(status: Status, index: u64) -> Status {
    let message = format!("event {index} of the stream: {}", status.message());
    Status::with_details(status.code(), message, status.details().to_vec().into())
}
