import CLua
import CScopeLua

/// A stage's `limits = { time = 0.5, instructions = 5e7, memory = "64MB" }`, or a
/// pipeline's, which its stages take field by field where they set none themselves
/// (docs/ARCHITECTURE.md, "Limits"). Each bounds one call of the stage's functions:
/// `time` every call (`open_time`, `flush_time`, `close_time` replace it for those),
/// `instructions` and `memory` every call.
struct StageLimits: Equatable {
    var time: Double?
    var openTime: Double?
    var flushTime: Double?
    var closeTime: Double?
    var instructions: Int64?
    /// Bytes, and the text the script wrote (`64MB`), which messages repeat.
    var memory: Int?
    var memoryText: String?

    /// The longest time limit (seconds), the most instructions, the least memory.
    static let maxTime: Double = 86_400
    static let maxInstructions: Int64 = 1 << 53
    static let minMemory = 1024

    static let fields = ["time", "instructions", "memory", "open_time", "flush_time", "close_time"]

    var isEmpty: Bool { self == StageLimits() }

    /// These limits, with `inherited`'s (the enclosing pipeline's) where these set none.
    func over(_ inherited: StageLimits?) -> StageLimits {
        guard let o = inherited else { return self }
        var l = self
        l.time = time ?? o.time
        l.openTime = openTime ?? o.openTime
        l.flushTime = flushTime ?? o.flushTime
        l.closeTime = closeTime ?? o.closeTime
        l.instructions = instructions ?? o.instructions
        if memory == nil {
            l.memory = o.memory
            l.memoryText = o.memoryText
        }
        return l
    }

    /// The time limit of a call (seconds), if any.
    func time(of call: StageCall) -> Double? {
        switch call {
        case .process: return time
        case .open: return openTime ?? time
        case .flush: return flushTime ?? time
        case .close: return closeTime ?? time
        }
    }

    /// Parses the `limits` table at `idx`; a failure says what is wrong with it.
    static func parse(_ L: LuaState, _ idx: Int32) -> Result<StageLimits, ErrorPolicy.Invalid> {
        let expected = "limits must be a table like { time = 0.5, instructions = 5e7, memory = \"64MB\" }"
        guard lua_type(L, idx) == LUA_TTABLE else {
            return .failure(.init(message: "\(expected) (got a \(Lua.typeName(L, idx)))"))
        }
        let idx = lua_absindex(L, idx)
        let base = lua_gettop(L)
        defer { lua_settop(L, base) }
        // A misspelt field would silently be no limit at all.
        lua_pushnil(L)
        while lua_next(L, idx) != 0 {
            let key = lua_type(L, -2) == LUA_TSTRING ? Lua.string(L, -2) : nil
            if key.map({ !fields.contains($0) }) ?? true {
                let name = key.map { "'\($0)'" } ?? Lua.describe(L, -2)
                return .failure(.init(message: "limits has no field \(name) (its fields: \(fields.joined(separator: ", ")))"))
            }
            sl_pop(L, 1)
        }
        var limits = StageLimits()
        for field in ["time", "open_time", "flush_time", "close_time"] {
            guard Lua.rawField(L, idx, field) != LUA_TNIL else { continue }
            let seconds = lua_type(L, -1) == LUA_TNUMBER ? lua_tonumberx(L, -1, nil) : .nan
            guard seconds > 0, seconds <= maxTime else {  // NaN fails both
                return .failure(.init(message: "limits.\(field) must be a number of seconds above 0 and at most \(Int(maxTime)) (got \(Lua.describe(L, -1)))"))
            }
            switch field {
            case "time": limits.time = seconds
            case "open_time": limits.openTime = seconds
            case "flush_time": limits.flushTime = seconds
            default: limits.closeTime = seconds
            }
            sl_pop(L, 1)
        }
        if Lua.rawField(L, idx, "instructions") != LUA_TNIL {
            let n = lua_type(L, -1) == LUA_TNUMBER ? lua_tonumberx(L, -1, nil) : .nan
            guard n >= 1, n <= Double(maxInstructions), n == n.rounded() else {
                return .failure(.init(message: "limits.instructions must be a whole number of VM instructions from 1 to 2^53, like 5e7 (got \(Lua.describe(L, -1)))"))
            }
            limits.instructions = Int64(n)
        }
        sl_pop(L, 1)
        switch Lua.rawField(L, idx, "memory") {
        case LUA_TNIL:
            break
        case let type where type == LUA_TSTRING || type == LUA_TNUMBER:
            let text = Lua.string(L, -1) ?? ""
            guard let bytes = Report.parseBytes(text), bytes >= minMemory else {
                return .failure(.init(message: "limits.memory must be a size of at least 1KB: bytes, or a number with KB, MB or GB like \"64MB\" (got \(Lua.describe(L, -1)))"))
            }
            limits.memory = bytes
            limits.memoryText = type == LUA_TSTRING ? text : Report.bytes(bytes)
        default:
            return .failure(.init(message: "limits.memory must be a size like \"64MB\" (got a \(Lua.typeName(L, -1)))"))
        }
        return .success(limits)
    }

    /// What a pipeline's `limits` (at `def`) says, or an error message (pushed by the caller).
    static func field(_ L: LuaState, _ def: Int32, owner: String) -> Result<StageLimits?, ErrorPolicy.Invalid> {
        defer { sl_pop(L, 1) }
        guard Lua.rawField(L, def, "limits") != LUA_TNIL else { return .success(nil) }
        switch parse(L, -1) {
        case .success(let l): return .success(l)
        case .failure(let e): return .failure(.init(message: "\(owner): \(e.message)"))
        }
    }

    /// `time 0.5 s, instructions 50000000, memory 64MB`: for the report and `:limits`.
    var summary: String {
        var parts: [String] = []
        if let time { parts.append("time \(Self.seconds(time)) s") }
        for (name, t) in [("open_time", openTime), ("flush_time", flushTime), ("close_time", closeTime)] {
            if let t { parts.append("\(name) \(Self.seconds(t)) s") }
        }
        if let instructions { parts.append("instructions \(instructions)") }
        if let memoryText { parts.append("memory \(memoryText)") }
        return parts.joined(separator: ", ")
    }

    /// Seconds as Lua's %.14g writes them (0.5, 5, 1.25).
    static func seconds(_ s: Double) -> String {
        s == s.rounded() && abs(s) < 1e15 ? String(Int64(s)) : String(s)
    }
}

/// Which function of a stage a call runs.
enum StageCall: String {
    case open, process, flush, close
}

/// Breaches of a stage's limits, by kind.
struct Breaches: Sendable, Equatable {
    var time = 0, instructions = 0, memory = 0

    var total: Int { time + instructions + memory }

    mutating func count(_ breach: Int32) {
        switch breach {
        case Int32(SL_BREACH_TIME): time += 1
        case Int32(SL_BREACH_INSTRUCTIONS): instructions += 1
        case Int32(SL_BREACH_MEMORY): memory += 1
        default: break
        }
    }

    mutating func add(_ o: Breaches) {
        time += o.time
        instructions += o.instructions
        memory += o.memory
    }

    /// `time 2, memory 1` (kinds that happened).
    var summary: String {
        [("time", time), ("instructions", instructions), ("memory", memory)]
            .filter { $0.1 > 0 }.map { "\($0.0) \($0.1)" }.joined(separator: ", ")
    }
}

/// A stage's limits in one run: what the C side enforces (`sl_Limits`, which lives as
/// long as this).
final class StageLimitsRun {
    let limits: StageLimits
    let name: String
    let c: UnsafeMutablePointer<sl_Limits>
    /// Time limits by call (ns, 0: none), computed once (a call is on the hot path).
    private let processTime, openTime, flushTime, closeTime: UInt64

    init(_ limits: StageLimits, stage: String) {
        self.limits = limits
        name = stage
        c = .allocate(capacity: 1)
        c.initialize(to: sl_Limits())
        c.pointee.instructions = limits.instructions ?? 0
        c.pointee.memory = Int64(limits.memory ?? 0)
        Self.copy("stage '\(stage)'", to: &c.pointee.who)
        Self.copy(limits.memoryText ?? "", to: &c.pointee.memtext)
        // At most a day: no overflow.
        func ns(_ call: StageCall) -> UInt64 { limits.time(of: call).map { UInt64($0 * 1e9) } ?? 0 }
        processTime = ns(.process)
        openTime = ns(.open)
        flushTime = ns(.flush)
        closeTime = ns(.close)
    }

    deinit {
        c.deinitialize(count: 1)
        c.deallocate()
    }

    /// Copies `text` into a fixed C array, cut to fit (at a character boundary) and
    /// terminated.
    private static func copy<T>(_ text: String, to field: inout T) {
        withUnsafeMutableBytes(of: &field) { raw in
            var bytes = Array(text.utf8)
            if bytes.count >= raw.count {
                var cut = raw.count - 4
                while cut > 0, bytes[cut] & 0xC0 == 0x80 { cut -= 1 }  // not inside a character
                bytes = Array(bytes[..<cut]) + Array("...".utf8)
            }
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
    }

    /// The time limit of a `call` in ns (0: none).
    @inline(__always)
    func time(of call: StageCall) -> UInt64 {
        switch call {
        case .process: return processTime
        case .open: return openTime
        case .flush: return flushTime
        case .close: return closeTime
        }
    }

    /// Starts a call of `call` at `t0` under these limits (see sl_limits_begin).
    @inline(__always)
    func begin(_ L: LuaState, _ call: StageCall, at t0: UInt64) {
        sl_limits_begin(L, c, time(of: call), t0)
    }

    /// Ends the call; the limit breached, if any (SL_BREACH_*, 0: none).
    @inline(__always)
    func end(_ L: LuaState, elapsed: UInt64) -> Int32 {
        sl_limits_end(L, elapsed)
    }

    /// `stage 'enrich' exceeded its time limit (0.5 s)`: what the script saw, which the
    /// caller completes with where (`on event line 1742`, `in open`).
    func message(_ breach: Int32, _ call: StageCall) -> String {
        switch breach {
        case Int32(SL_BREACH_TIME):
            return "stage '\(name)' exceeded its time limit (\(StageLimits.seconds(limits.time(of: call) ?? 0)) s)"
        case Int32(SL_BREACH_INSTRUCTIONS):
            return "stage '\(name)' exceeded its instruction limit (\(limits.instructions ?? 0) instructions)"
        default:
            return "stage '\(name)' exceeded its memory limit (\(limits.memoryText ?? "?"))"
        }
    }
}

/// How a stage call ended.
struct StageCallStatus {
    /// sl_pcall's status.
    var code: Int32
    /// The limit it breached (SL_BREACH_*), 0: none.
    var breach: Int32
    var elapsed: UInt64
}

extension PipelineRun {
    /// Calls the function below the `nargs` arguments on top, a `call` of `stage`, in
    /// protected mode under the stage's limits (if any).
    @inline(__always)
    func limitedCall(_ L: LuaState, _ stage: StageRun, _ call: StageCall, nargs: Int32, nresults: Int32) -> StageCallStatus {
        let t0 = sl_monotonic_ns()
        guard let limits = stage.limits else {
            let code = sl_pcall(L, nargs, nresults, msgh)
            return StageCallStatus(code: code, breach: 0, elapsed: sl_elapsed_ns(t0))
        }
        limits.begin(L, call, at: t0)
        let code = sl_pcall(L, nargs, nresults, msgh)
        let elapsed = sl_elapsed_ns(t0)
        let breach = limits.end(L, elapsed: elapsed)
        if breach != 0 { stage.breaches.count(breach) }
        return StageCallStatus(code: code, breach: breach, elapsed: elapsed)
    }

    /// After a call that breached its stage's limits: what it left on top (its `results`
    /// results when it returned, else its error) is replaced by the breach's message with
    /// `place` (`on event line 3`, `in open`): whatever the script did with the error, the
    /// call failed. Returns the status to go on with, and the traceback of where the
    /// breach was raised in the script, if it was.
    func pushBreach(_ L: LuaState, _ stage: StageRun, _ status: StageCallStatus, _ call: StageCall,
                    results: Int32 = 0, where place: String) -> (code: Int32, traceback: String?) {
        var traceback: String?
        if status.code == LUA_OK {
            lua_settop(L, lua_gettop(L) - results)
        } else {
            traceback = rt.takeTraceback(L, -1)
            sl_pop(L, 1)
        }
        let message = stage.limits?.message(status.breach, call) ?? "stage '\(stage.definition.name)' exceeded a limit"
        Lua.push(L, "\(message) \(place)")
        return (LUA_ERRRUN, traceback)
    }
}

extension PipelineRegistry {
    /// `enrich in analytics: time 0.5 s, instructions 50000000`: the limits each stage of
    /// each registered pipeline runs under (the REPL's `:limits`); empty when none has any.
    package var limitsSummary: [String] {
        pipelineOrder.compactMap { pipelines[$0] }.flatMap { p in
            zip(p.allStages, p.allStageLimits()).compactMap { stage, limits in
                limits.map { "\(stage.name) in \(p.name): \($0.summary)" }
            }
        }
    }
}
