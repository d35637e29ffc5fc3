import CScopeLua
import ScopeLua

/// `GET /resources`: every handle open in the run, per Lua state, as JSON. Each state's
/// thread walked its own handles when it last published to the board (rule 6: only the
/// thread that runs a state may); this only writes them out, with their age now.
///
///     {"pipeline": "p", "states": [
///       {"state": "run", "worker": 0, "ended": false, "published_ms_ago": 112, "open": 1,
///        "handles": [{"id": 3, "kind": "file", "label": "out.log", "scope": "run/p/log_events",
///                     "age_seconds": 12.5, "site": "job.lua:4"}]}]}
///
/// `state` is `run` for a run in one state, `coordinator` and `worker N` with workers.
enum ResourcesView {
    static func render(_ snapshots: [RunSnapshot], now: UInt64 = sl_monotonic_ns()) -> String {
        let workers = snapshots.contains { $0.slot > 0 }
        let pipeline = snapshots.first.map { Server.quoted($0.pipeline) } ?? "null"
        let states = snapshots.map { s -> String in
            let name = s.slot > 0 ? "worker \(s.slot)" : workers ? "coordinator" : "run"
            let handles = s.handles.map { h -> String in
                let age = Double(now &- min(now, h.acquiredAt)) / 1e9
                return "{\"id\":\(h.id),\"kind\":\(Server.quoted(h.kind)),\"label\":\(h.label.map(Server.quoted) ?? "null"),"
                    + "\"scope\":\(Server.quoted(h.scope)),\"age_seconds\":\(seconds(age)),\"site\":\(Server.quoted(h.site))}"
            }
            let ago = (now &- min(now, s.takenAt)) / 1_000_000
            return "{\"state\":\(Server.quoted(name)),\"worker\":\(s.slot),\"ended\":\(s.ended),\"published_ms_ago\":\(ago),"
                + "\"open\":\(s.handles.count),\"handles\":[\(handles.joined(separator: ","))]}"
        }
        return "{\"pipeline\":\(pipeline),\"states\":[\(states.joined(separator: ","))]}"
    }

    /// Seconds with millisecond precision, as a JSON number.
    static func seconds(_ s: Double) -> String {
        let ms = (s * 1000).rounded()
        return ms.isFinite ? String(ms / 1000) : "0"
    }
}
