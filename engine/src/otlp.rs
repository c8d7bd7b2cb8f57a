//! OpenTelemetry spans from OTLP/JSON (`ExportTraceServiceRequest` in the
//! protobuf JSON mapping, as OTLP/HTTP exporters send it and the collector's
//! file exporter writes it: one request per file, or one per line).
//!
//! Only what the engine needs is kept ([`Span`]): ids, name, service, kind,
//! times, status, the process and thread the span ran on (`process.pid` on the
//! resource or the span, `thread.id` on the span) and the transaction id (the
//! span or resource attribute named by [`crate::EngineConfig::txn_attribute`]).
//!
//! Malformed input is an [`OtlpError`] naming where (file and line, or the
//! HTTP request) and the JSON path of the field, e.g.
//! `spans.json:3: resourceSpans[0].scopeSpans[0].spans[2].startTimeUnixNano: expected nanoseconds as a decimal string or number, got true`.

use serde_json::Value;
use std::path::Path;

/// One span, as the engine uses it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Span {
    /// W3C trace id.
    #[serde(serialize_with = "ser_hex")]
    pub trace_id: [u8; 16],
    /// Span id.
    #[serde(serialize_with = "ser_hex")]
    pub span_id: [u8; 8],
    /// Parent span id (zeros for a root span).
    #[serde(serialize_with = "ser_hex")]
    pub parent_span_id: [u8; 8],
    /// Span name.
    pub name: String,
    /// `service.name` of its resource.
    pub service: String,
    /// OTLP span kind (1 internal, 2 server, 3 client, 4 producer, 5 consumer; 0 unspecified).
    pub kind: i64,
    /// Start, nanoseconds since the epoch.
    pub start_ns: u64,
    /// End, nanoseconds since the epoch.
    pub end_ns: u64,
    /// Status code: 0 unset, 1 ok, 2 error.
    pub status: u8,
    /// Status message (e.g. why a payment failed).
    pub status_message: String,
    /// Process id (`process.pid`), when known.
    pub pid: Option<u32>,
    /// Thread id (`thread.id`), when known.
    pub tid: Option<u32>,
    /// Transaction id (empty when the span names none).
    pub txn: String,
}

fn ser_hex<S: serde::Serializer, const N: usize>(v: &[u8; N], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex::encode(v))
}

impl Span {
    /// Duration in nanoseconds.
    pub fn duration_ns(&self) -> u64 {
        self.end_ns.saturating_sub(self.start_ns)
    }
    /// True for a root span (no parent).
    pub fn is_root(&self) -> bool {
        self.parent_span_id == [0; 8]
    }
    /// The span as a `.kpl` span reference.
    pub fn to_ref(&self) -> kpl::event::SpanRef {
        kpl::event::SpanRef {
            trace_id: self.trace_id,
            span_id: self.span_id,
            parent_span_id: self.parent_span_id,
            name: self.name.clone(),
            service: self.service.clone(),
            txn: self.txn.clone(),
            start_ns: self.start_ns,
            end_ns: self.end_ns,
            status: self.status,
        }
    }
    /// A span from a `.kpl` span event (the event's pid/tid are the span's task).
    pub fn from_ref(r: &kpl::event::SpanRef, pid: u32, tid: u32) -> Span {
        Span {
            trace_id: r.trace_id,
            span_id: r.span_id,
            parent_span_id: r.parent_span_id,
            name: r.name.clone(),
            service: r.service.clone(),
            kind: 0,
            start_ns: r.start_ns,
            end_ns: r.end_ns,
            status: r.status,
            status_message: String::new(),
            pid: (pid != 0).then_some(pid),
            tid: (tid != 0).then_some(tid),
            txn: r.txn.clone(),
        }
    }
}

/// Malformed OTLP/JSON input: where, which field, what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{origin}: {field}: {reason}")]
pub struct OtlpError {
    /// The file (and line) or request the input came from.
    pub origin: String,
    /// JSON path of the offending field (e.g. `resourceSpans[0].scopeSpans[0].spans[1].traceId`).
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

struct Ctx<'a> {
    origin: &'a str,
}

impl Ctx<'_> {
    fn err(&self, field: &str, reason: impl Into<String>) -> OtlpError {
        OtlpError { origin: self.origin.to_owned(), field: field.to_owned(), reason: reason.into() }
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn show(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 40 {
        format!("{}...", &s[..40])
    } else {
        s
    }
}

fn array<'v>(c: &Ctx, v: &'v Value, key: &str, path: &str) -> Result<&'v [Value], OtlpError> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(a)) => Ok(a),
        Some(o) => Err(c.err(&join(path, key), format!("expected an array, got {}", kind_of(o)))),
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn id<const N: usize>(c: &Ctx, v: &Value, key: &str, path: &str, required: bool) -> Result<[u8; N], OtlpError> {
    let f = join(path, key);
    match v.get(key) {
        None | Some(Value::Null) if !required => Ok([0; N]),
        None | Some(Value::Null) => Err(c.err(&f, "missing")),
        Some(Value::String(s)) if s.is_empty() && !required => Ok([0; N]),
        Some(Value::String(s)) => {
            let mut out = [0u8; N];
            if s.len() != 2 * N {
                return Err(c.err(&f, format!("expected {} hex digits, got {} characters ({s:?})", 2 * N, s.len())));
            }
            hex::decode_to_slice(s, &mut out).map_err(|_| c.err(&f, format!("not hexadecimal: {s:?}")))?;
            if required && out == [0; N] {
                return Err(c.err(&f, "an all-zero id is invalid"));
            }
            Ok(out)
        }
        Some(o) => Err(c.err(&f, format!("expected a hex string, got {}", kind_of(o)))),
    }
}

fn nanos(c: &Ctx, v: &Value, key: &str, path: &str) -> Result<u64, OtlpError> {
    let f = join(path, key);
    match v.get(key) {
        None | Some(Value::Null) => Err(c.err(&f, "missing")),
        Some(Value::String(s)) => s.parse::<u64>().map_err(|_| c.err(&f, format!("expected nanoseconds as a decimal string, got {s:?}"))),
        Some(Value::Number(n)) => n.as_u64().ok_or_else(|| c.err(&f, format!("expected a non-negative integer, got {n}"))),
        Some(o) => Err(c.err(&f, format!("expected nanoseconds as a decimal string or number, got {}", show(o)))),
    }
}

/// An attribute value rendered as a string (`stringValue`, `intValue`,
/// `boolValue`, `doubleValue`; arrays and maps as JSON).
fn any_value(c: &Ctx, v: &Value, path: &str) -> Result<String, OtlpError> {
    let Value::Object(m) = v else {
        return Err(c.err(path, format!("expected an AnyValue object, got {}", kind_of(v))));
    };
    let Some((k, x)) = m.iter().next() else {
        return Ok(String::new());
    };
    let f = join(path, k);
    match (k.as_str(), x) {
        ("stringValue", Value::String(s)) => Ok(s.clone()),
        ("intValue", Value::String(s)) => {
            s.parse::<i64>().map(|i| i.to_string()).map_err(|_| c.err(&f, format!("expected a decimal integer, got {s:?}")))
        }
        ("intValue", Value::Number(n)) if n.is_i64() || n.is_u64() => Ok(n.to_string()),
        ("boolValue", Value::Bool(b)) => Ok(b.to_string()),
        ("doubleValue", Value::Number(n)) => Ok(n.to_string()),
        ("bytesValue", Value::String(s)) => Ok(s.clone()),
        ("arrayValue" | "kvlistValue", x) => Ok(x.to_string()),
        (k, x) if ["stringValue", "intValue", "boolValue", "doubleValue", "bytesValue"].contains(&k) => {
            Err(c.err(&f, format!("wrong type: {}", show(x))))
        }
        (k, _) => Err(c.err(&f, format!("unknown AnyValue field `{k}`"))),
    }
}

fn attributes(c: &Ctx, v: &Value, path: &str) -> Result<Vec<(String, String)>, OtlpError> {
    let mut out = Vec::new();
    for (i, a) in array(c, v, "attributes", path)?.iter().enumerate() {
        let p = format!("{}[{i}]", join(path, "attributes"));
        let key = match a.get("key") {
            Some(Value::String(s)) => s.clone(),
            Some(o) => return Err(c.err(&join(&p, "key"), format!("expected a string, got {}", kind_of(o)))),
            None => return Err(c.err(&join(&p, "key"), "missing")),
        };
        let val = match a.get("value") {
            Some(Value::Null) | None => String::new(),
            Some(x) => any_value(c, x, &join(&p, "value"))?,
        };
        out.push((key, val));
    }
    Ok(out)
}

fn attr<'a>(attrs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    attrs.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

fn id_attr(c: &Ctx, attrs: &[(String, String)], key: &str, path: &str) -> Result<Option<u32>, OtlpError> {
    match attr(attrs, key) {
        None | Some("") => Ok(None),
        Some(s) => s
            .parse::<u32>()
            .map(Some)
            .map_err(|_| c.err(&format!("{path}.attributes[{key}]"), format!("expected a process or thread id, got {s:?}"))),
    }
}

/// Parses one `ExportTraceServiceRequest` object. `origin` names where it
/// came from in errors; `txn_attr` is the attribute holding the transaction id.
pub fn parse_request(v: &Value, origin: &str, txn_attr: &str) -> Result<Vec<Span>, OtlpError> {
    let c = Ctx { origin };
    if !v.is_object() {
        return Err(c.err("(top level)", format!("expected an ExportTraceServiceRequest object, got {}", kind_of(v))));
    }
    let mut out = Vec::new();
    for (ri, rs) in array(&c, v, "resourceSpans", "")?.iter().enumerate() {
        let rp = format!("resourceSpans[{ri}]");
        let rattrs = match rs.get("resource") {
            Some(r) => attributes(&c, r, &join(&rp, "resource"))?,
            None => Vec::new(),
        };
        let service = attr(&rattrs, "service.name").unwrap_or("").to_owned();
        let rpid = id_attr(&c, &rattrs, "process.pid", &join(&rp, "resource"))?;
        let rtxn = attr(&rattrs, txn_attr).unwrap_or("").to_owned();
        // `instrumentationLibrarySpans` is the pre-1.0 name of `scopeSpans`.
        let key = if rs.get("scopeSpans").is_some() { "scopeSpans" } else { "instrumentationLibrarySpans" };
        for (si, ss) in array(&c, rs, key, &rp)?.iter().enumerate() {
            let sp = format!("{rp}.{key}[{si}]");
            for (i, s) in array(&c, ss, "spans", &sp)?.iter().enumerate() {
                let p = format!("{sp}.spans[{i}]");
                if !s.is_object() {
                    return Err(c.err(&p, format!("expected a span object, got {}", kind_of(s))));
                }
                let trace_id = id::<16>(&c, s, "traceId", &p, true)?;
                let span_id = id::<8>(&c, s, "spanId", &p, true)?;
                let parent_span_id = id::<8>(&c, s, "parentSpanId", &p, false)?;
                let name = match s.get("name") {
                    Some(Value::String(n)) => n.clone(),
                    None | Some(Value::Null) => String::new(),
                    Some(o) => return Err(c.err(&join(&p, "name"), format!("expected a string, got {}", kind_of(o)))),
                };
                let kind = match s.get("kind") {
                    None | Some(Value::Null) => 0,
                    Some(Value::Number(n)) if n.as_i64().is_some_and(|k| (0..=5).contains(&k)) => n.as_i64().unwrap(),
                    Some(Value::String(k)) => match k.as_str() {
                        "SPAN_KIND_UNSPECIFIED" => 0,
                        "SPAN_KIND_INTERNAL" => 1,
                        "SPAN_KIND_SERVER" => 2,
                        "SPAN_KIND_CLIENT" => 3,
                        "SPAN_KIND_PRODUCER" => 4,
                        "SPAN_KIND_CONSUMER" => 5,
                        _ => return Err(c.err(&join(&p, "kind"), format!("unknown span kind {k:?}"))),
                    },
                    Some(o) => return Err(c.err(&join(&p, "kind"), format!("expected a span kind 0..5, got {}", show(o)))),
                };
                let start_ns = nanos(&c, s, "startTimeUnixNano", &p)?;
                let end_ns = nanos(&c, s, "endTimeUnixNano", &p)?;
                if end_ns < start_ns {
                    return Err(c.err(&join(&p, "endTimeUnixNano"), format!("ends ({end_ns}) before it starts ({start_ns})")));
                }
                let attrs = attributes(&c, s, &p)?;
                let (status, status_message) = match s.get("status") {
                    None | Some(Value::Null) => (0, String::new()),
                    Some(st @ Value::Object(_)) => {
                        let code = match st.get("code") {
                            None | Some(Value::Null) => 0,
                            Some(Value::Number(n)) if n.as_u64().is_some_and(|k| k <= 2) => n.as_u64().unwrap() as u8,
                            Some(Value::String(k)) => match k.as_str() {
                                "STATUS_CODE_UNSET" => 0,
                                "STATUS_CODE_OK" => 1,
                                "STATUS_CODE_ERROR" => 2,
                                _ => return Err(c.err(&format!("{p}.status.code"), format!("unknown status code {k:?}"))),
                            },
                            Some(o) => return Err(c.err(&format!("{p}.status.code"), format!("expected 0, 1 or 2, got {}", show(o)))),
                        };
                        let msg = st.get("message").and_then(Value::as_str).unwrap_or("").to_owned();
                        (code, msg)
                    }
                    Some(o) => return Err(c.err(&join(&p, "status"), format!("expected an object, got {}", kind_of(o)))),
                };
                let pid = id_attr(&c, &attrs, "process.pid", &p)?.or(rpid);
                let tid = id_attr(&c, &attrs, "thread.id", &p)?;
                let txn = attr(&attrs, txn_attr).map(str::to_owned).unwrap_or_else(|| rtxn.clone());
                out.push(Span {
                    trace_id,
                    span_id,
                    parent_span_id,
                    name,
                    service: service.clone(),
                    kind,
                    start_ns,
                    end_ns,
                    status,
                    status_message,
                    pid,
                    tid,
                    txn,
                });
            }
        }
    }
    Ok(out)
}

/// Parses a request body (one JSON object). `origin` names it in errors.
pub fn parse_bytes(bytes: &[u8], origin: &str, txn_attr: &str) -> Result<Vec<Span>, OtlpError> {
    let v: Value = serde_json::from_slice(bytes).map_err(|e| OtlpError {
        origin: origin.to_owned(),
        field: format!("(line {}, column {})", e.line(), e.column()),
        reason: format!("not valid JSON: {e}"),
    })?;
    parse_request(&v, origin, txn_attr)
}

/// Reads an OTLP/JSON file: one request object, or JSON lines with one
/// request per line (the collector's file exporter).
pub fn read_file(path: &Path, txn_attr: &str) -> anyhow::Result<Vec<Span>> {
    let bytes = std::fs::read(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let name = path.display().to_string();
    let text = std::str::from_utf8(&bytes).map_err(|e| OtlpError {
        origin: name.clone(),
        field: "(file)".into(),
        reason: format!("not UTF-8 text: {e}"),
    })?;
    // A whole-file object first; otherwise JSON lines.
    if let Ok(v) = serde_json::from_str::<Value>(text) {
        return Ok(parse_request(&v, &name, txn_attr)?);
    }
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        out.extend(parse_bytes(line.as_bytes(), &format!("{name}:{}", i + 1), txn_attr)?);
    }
    Ok(out)
}

/// Builds an OTLP/JSON request holding `spans` (grouped by service), the
/// shape [`parse_request`] reads; used by the fixtures' exporters and tests.
pub fn to_request(spans: &[Span], txn_attr: &str) -> Value {
    use serde_json::json;
    let mut services: Vec<&str> = spans.iter().map(|s| s.service.as_str()).collect();
    services.sort();
    services.dedup();
    let rs: Vec<Value> = services
        .iter()
        .map(|svc| {
            let ss: Vec<Value> = spans
                .iter()
                .filter(|s| s.service == *svc)
                .map(|s| {
                    let mut attrs = vec![json!({"key": txn_attr, "value": {"stringValue": s.txn}})];
                    if let Some(p) = s.pid {
                        attrs.push(json!({"key": "process.pid", "value": {"intValue": p.to_string()}}));
                    }
                    if let Some(t) = s.tid {
                        attrs.push(json!({"key": "thread.id", "value": {"intValue": t.to_string()}}));
                    }
                    json!({
                        "traceId": hex::encode(s.trace_id), "spanId": hex::encode(s.span_id),
                        "parentSpanId": if s.is_root() { String::new() } else { hex::encode(s.parent_span_id) },
                        "name": s.name, "kind": s.kind,
                        "startTimeUnixNano": s.start_ns.to_string(), "endTimeUnixNano": s.end_ns.to_string(),
                        "attributes": attrs, "status": {"code": s.status, "message": s.status_message},
                    })
                })
                .collect();
            json!({"resource": {"attributes": [{"key": "service.name", "value": {"stringValue": svc}}]},
                   "scopeSpans": [{"scope": {"name": "kprobe"}, "spans": ss}]})
        })
        .collect();
    json!({ "resourceSpans": rs })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(span: Value) -> Value {
        serde_json::json!({"resourceSpans": [{"resource": {"attributes": [
            {"key": "service.name", "value": {"stringValue": "ledger"}},
            {"key": "process.pid", "value": {"intValue": 42}}]},
            "scopeSpans": [{"spans": [span]}]}]})
    }

    #[test]
    fn parses_a_span() {
        let v = req(serde_json::json!({"traceId": "0af7651916cd43dd8448eb211c80319c", "spanId": "b7ad6b7169203331",
            "name": "ledger.append", "kind": 2, "startTimeUnixNano": "1000", "endTimeUnixNano": 5000,
            "attributes": [{"key": "transaction.id", "value": {"stringValue": "txn-7"}},
                           {"key": "thread.id", "value": {"intValue": "43"}}],
            "status": {"code": "STATUS_CODE_ERROR", "message": "late"}}));
        let s = parse_request(&v, "t.json", "transaction.id").unwrap();
        assert_eq!(s.len(), 1);
        let s = &s[0];
        assert_eq!((s.pid, s.tid, s.txn.as_str(), s.status, s.duration_ns()), (Some(42), Some(43), "txn-7", 2, 4000));
        assert_eq!(s.service, "ledger");
        assert!(s.is_root());
    }

    #[test]
    fn errors_name_the_field() {
        let v = req(serde_json::json!({"traceId": "zz", "spanId": "b7ad6b7169203331", "startTimeUnixNano": "1", "endTimeUnixNano": "2"}));
        let e = parse_request(&v, "t.json", "transaction.id").unwrap_err();
        assert_eq!(e.field, "resourceSpans[0].scopeSpans[0].spans[0].traceId");
        assert!(e.to_string().starts_with("t.json: resourceSpans[0]"), "{e}");
        let v = req(serde_json::json!({"traceId": "0af7651916cd43dd8448eb211c80319c", "spanId": "b7ad6b7169203331",
            "startTimeUnixNano": true, "endTimeUnixNano": "2"}));
        let e = parse_request(&v, "t.json", "transaction.id").unwrap_err();
        assert!(e.field.ends_with("startTimeUnixNano") && e.reason.contains("true"), "{e}");
        let e = parse_bytes(b"{\"resourceSpans\": [", "req", "x").unwrap_err();
        assert!(e.reason.contains("not valid JSON"), "{e}");
        let e = parse_bytes(b"{\"resourceSpans\": 3}", "req", "x").unwrap_err();
        assert_eq!(e.field, "resourceSpans");
    }

    #[test]
    fn round_trips_through_to_request() {
        let v = req(serde_json::json!({"traceId": "0af7651916cd43dd8448eb211c80319c", "spanId": "b7ad6b7169203331",
            "parentSpanId": "a7ad6b7169203331", "name": "n", "startTimeUnixNano": "10", "endTimeUnixNano": "20",
            "attributes": [{"key": "transaction.id", "value": {"stringValue": "t"}}]}));
        let s = parse_request(&v, "x", "transaction.id").unwrap();
        let again = parse_request(&to_request(&s, "transaction.id"), "y", "transaction.id").unwrap();
        assert_eq!(s, again);
    }
}
