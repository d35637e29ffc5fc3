import CLua
import CScopeLua

/// Replaying dead letters (`scopelua run job.lua --input dead.jsonl --replay`,
/// `p:run{ input = ..., replay = true }`): each input line (list item) is a record that
/// an earlier run wrote to its dead-letter file (PipelineRun.writeDeadLetter, reject).
///
/// - An event record (`event`, `stage`) puts its event back into the stage that failed,
///   found by name in the flattened stage list (nested pipelines included): the stages
///   before it already ran and do not run again.
/// - A rejected line's record (`raw`) is read again from its raw text, as a fresh input
///   line: through the whole pipeline, or rejected again.
/// - A line that is no usable record (not a record, a stage the pipeline no longer has)
///   is rejected with its line number and why. Its rejection record carries
///   `"replay": true`: its `raw` is the record, so a later replay of that file reads the
///   record again (not an event to send through the pipeline).
///
/// A record counts once in `read` and ends in one category like any event read (the
/// invariant holds); `replayed` counts the records whose event went back into the
/// pipeline or whose raw text was read again. What a replayed record leads to in the
/// new dead-letter file keeps the record's original `line` (and `emitted`) and carries
/// `attempt`: the record's own (1 when it has none) plus one.
struct ReplayState {
    /// Records re-injected (their event) or read again (their raw text).
    var count = 0
    /// The record being replayed, while its event goes through the stages.
    var current: Record?

    struct Record {
        /// The input line of the original event (none for an event a timer emitted).
        var line: Int?
        /// A stage emitted the original event (while processing `line`).
        var emitted: Bool
        /// This attempt's number: the record's attempt plus one.
        var attempt: Int
    }
}

extension PipelineRun {
    /// Replays the record on top of the stack (popped), read at input line (list
    /// position) `line`. False when the run must stop (the record is then in flight).
    func replayRecord(_ L: LuaState, line: Int) -> Bool {
        let base = lua_gettop(L) - 1
        defer {
            lua_settop(L, base)
            replay.current = nil
        }
        // At most three values per unwrapped level, and a few more.
        Lua.reserve(L, 64, for: "a replayed record")
        var record = lua_gettop(L)
        // A line an earlier replay rejected holds the record it could not use: read that.
        var unwrapped = 0
        while Lua.rawField(L, record, "replay") == LUA_TBOOLEAN, lua_toboolean(L, -1) != 0,
              Lua.rawField(L, record, "raw") == LUA_TSTRING {
            unwrapped += 1
            guard unwrapped <= 16 else { return rejectRecord(L, line: line, record, "records nested too deep") }
            let text = lua_gettop(L)
            switch decodeLine(L, text) {
            case .object:
                record = lua_gettop(L)
            case .rejected(let reason):
                return reject(L, line: line, reason: reason, raw: Lua.string(L, text))
            }
        }
        // The fields every record may have.
        guard let attempt = positiveInteger(L, record, "attempt", default: 1), attempt < Int.max else {
            return rejectRecord(L, line: line, record, "\"attempt\" must be a positive integer")
        }
        let originalLine: Int?
        switch Lua.rawField(L, record, "line") {
        case LUA_TNIL: originalLine = nil
        default:
            guard let n = positiveInteger(L, record, "line", default: nil) else {
                return rejectRecord(L, line: line, record, "\"line\" must be a positive integer")
            }
            originalLine = n
        }
        let emitted = Lua.rawField(L, record, "emitted") == LUA_TBOOLEAN && lua_toboolean(L, -1) != 0
        let next = ReplayState.Record(line: originalLine, emitted: emitted, attempt: attempt + 1)

        switch Lua.rawField(L, record, "stage") {
        case LUA_TSTRING:
            // An event a stage failed on: back into that stage.
            let name = Lua.string(L, -1) ?? ""
            guard Lua.rawField(L, record, "event") == LUA_TTABLE else {
                return rejectRecord(L, line: line, record, "its \"event\" is missing or not an object")
            }
            let event = lua_gettop(L)
            let positions = stages.indices.filter { stages[$0].definition.name == name }
            guard let index = positions.first else {
                let names = stages.map { $0.definition.name }.joined(separator: ", ")
                return rejectRecord(L, line: line, record, "stage '\(name)' is not in pipeline '\(definition.name)' (its stages: \(names))", isRecord: true)
            }
            guard positions.count == 1 else {
                return rejectRecord(L, line: line, record, "stage '\(name)' appears \(positions.count) times in pipeline '\(definition.name)': the record cannot say which one failed", isRecord: true)
            }
            replay.current = next
            replay.count += 1
            lua_pushvalue(L, event)
            return deliver(L, index, extra: false)
        case LUA_TNIL:
            break
        default:
            return rejectRecord(L, line: line, record, "its \"stage\" must be a string")
        }
        if Lua.rawField(L, record, "raw") == LUA_TSTRING {
            // A rejected input line: read again from its raw text, as a fresh line.
            replay.current = next
            replay.count += 1
            let text = lua_gettop(L)
            switch decodeLine(L, text) {
            case .object:
                return deliver(L, 0, extra: false)
            case .rejected(let reason):
                return reject(L, line: line, reason: reason, raw: Lua.string(L, text))
            }
        }
        if Lua.rawField(L, record, "error") != LUA_TNIL {
            return rejectRecord(L, line: line, record, "a rejected line's record without its raw text (nothing to read again)", isRecord: true)
        }
        return rejectRecord(L, line: line, record, "neither \"event\" and \"stage\" nor \"raw\"")
    }

    /// The integer field `key` of the table at `table` if it is a positive integer (an
    /// integral float too), `fallback` when absent, nil otherwise. Stack: 0.
    private func positiveInteger(_ L: LuaState, _ table: Int32, _ key: String, default fallback: Int?) -> Int? {
        defer { sl_pop(L, 1) }
        let type = Lua.rawField(L, table, key)
        if type == LUA_TNIL { return fallback }
        guard type == LUA_TNUMBER else { return nil }
        var isInteger: Int32 = 0
        let n = lua_tointegerx(L, -1, &isInteger)
        guard isInteger != 0, n >= 1 else { return nil }
        return Int(exactly: n)
    }

    /// Rejects the record at `record` (read at `line`) as one replay cannot use, with
    /// the record as its raw text. `isRecord`: it is a dead-letter record, only not one
    /// this pipeline can replay (the reason says why).
    private func rejectRecord(_ L: LuaState, line: Int, _ record: Int32, _ why: String, isRecord: Bool = false) -> Bool {
        var raw: String?
        if rt.json.encode(L, record) { raw = Lua.string(L, -1) }
        sl_pop(L, 1)
        return reject(L, line: line, reason: isRecord ? "cannot replay the dead-letter record: \(why)" : "not a dead-letter record: \(why)", raw: raw)
    }

    private enum Decoded {
        /// The object is on top of the stack.
        case object
        case rejected(String)
    }

    /// Decodes the string at `text` as an input line is decoded: a JSON object pushed,
    /// or the reason it is rejected (nothing pushed).
    private func decodeLine(_ L: LuaState, _ text: Int32) -> Decoded {
        var len = 0
        guard let p = lua_tolstring(L, text, &len) else { return .rejected("not valid JSON: not a string") }
        let bytes = UnsafeBufferPointer(start: UnsafeRawPointer(p).assumingMemoryBound(to: UInt8.self), count: len)
        guard let first = bytes.first(where: { $0 != 32 && $0 != 9 }) else { return .rejected("the line is blank") }
        guard isValidUTF8(bytes) else { return .rejected("line is not valid UTF-8") }
        let base = lua_gettop(L)
        guard rt.json.decode(L, text) else {
            let reason = "not valid JSON: \(Lua.describe(L, -1))"
            lua_settop(L, base)
            return .rejected(reason)
        }
        guard lua_type(L, -1) == LUA_TTABLE, first == 123 else {
            lua_settop(L, base)
            return .rejected("not a JSON object")
        }
        return .object
    }

    /// Adds to the record on top of the stack (being written to the dead-letter file)
    /// what it keeps of the record being replayed: the original `line`, `emitted` and
    /// the `attempt`. A rejected line of the replay input that is no usable record is
    /// marked `"replay": true` (its raw text is a record).
    func annotateReplayed(_ L: LuaState, deadLetter: Bool) {
        // While a timer fires (eventLine 0), what fails is none of the record's doing.
        guard let current = replay.current, eventLine > 0 else {
            if !deadLetter {
                lua_pushboolean(L, 1)
                Lua.setField(L, -2, "replay")
            }
            return
        }
        if let line = current.line { lua_pushinteger(L, lua_Integer(line)) } else { lua_pushnil(L) }
        Lua.setField(L, -2, "line")
        if current.emitted {
            lua_pushboolean(L, 1)
            Lua.setField(L, -2, "emitted")
        }
        lua_pushinteger(L, lua_Integer(current.attempt))
        Lua.setField(L, -2, "attempt")
    }

    /// Where the event being replayed comes from, for messages: `line 17 (replayed from
    /// line 3)`, the original input line and the line of the replay input; nil when no
    /// record is being replayed.
    var replayPlace: String? {
        guard let current = replay.current, eventLine > 0 else { return nil }
        let here = "\(options.input.isList ? "event" : "line") \(eventLine)"
        guard let line = current.line else { return "the event replayed from \(here)" }
        return "line \(line) (replayed from \(here), attempt \(current.attempt))"
    }
}
