import CLua
import CScopeLua

/// What happens to an event whose `process` call failed.
indirect enum ErrorPolicy: Equatable {
    /// Stop the run: every scope is released, the error is reported, exit status 1.
    case abort
    /// Drop the event (counted as skipped) and go on.
    case skip
    /// Write the event, the error and its traceback to the dead-letter output and go on.
    case deadLetter
    /// Call again up to `times` times, waiting `backoff` seconds (doubling each time),
    /// then apply `then`.
    case retry(times: Int, backoff: Double, then: ErrorPolicy)

    /// The most retries a policy may ask for, and the longest first wait (seconds).
    static let maxRetries: lua_Integer = 1000
    static let maxBackoff: Double = 3600

    /// A reason an `on_error` value was refused.
    struct Invalid: Error {
        let message: String
    }

    /// Parses an `on_error` value at `idx`; a failure says what is wrong with it.
    static func parse(_ L: LuaState, _ idx: Int32) -> Result<ErrorPolicy, Invalid> {
        let expected = "on_error must be \"abort\", \"skip\", \"dead_letter\" or { retry = n, backoff = seconds, [\"then\"] = ... }"
        switch lua_type(L, idx) {
        case LUA_TSTRING:
            switch Lua.string(L, idx) ?? "" {
            case "abort": return .success(.abort)
            case "skip": return .success(.skip)
            case "dead_letter": return .success(.deadLetter)
            case let other: return .failure(Invalid(message: "\(expected) (got \"\(other)\")"))
            }
        case LUA_TTABLE:
            let idx = lua_absindex(L, idx)
            let base = lua_gettop(L)
            defer { lua_settop(L, base) }
            // Values a script chose: checked against their range here, so that no
            // conversion or wait later can trap or overflow.
            let retryType = Lua.rawField(L, idx, "retry")
            var isInteger: Int32 = 0
            let times = lua_tointegerx(L, -1, &isInteger)
            guard retryType == LUA_TNUMBER, isInteger != 0, (1...maxRetries).contains(times) else {
                let got = retryType == LUA_TNUMBER ? Lua.describe(L, -1) : "a \(Lua.typeName(L, -1))"
                return .failure(Invalid(message: "\(expected) (retry must be an integer from 1 to \(maxRetries), got \(got))"))
            }
            var backoff = 0.0
            switch Lua.rawField(L, idx, "backoff") {
            case LUA_TNIL: break
            case LUA_TNUMBER where (0...maxBackoff).contains(lua_tonumberx(L, -1, nil)):  // NaN is in no range
                backoff = lua_tonumberx(L, -1, nil)
            case let type:
                let got = type == LUA_TNUMBER ? Lua.describe(L, -1) : "a \(Lua.typeName(L, -1))"
                return .failure(Invalid(message: "\(expected) (backoff must be a number of seconds from 0 to \(Int(maxBackoff)), got \(got))"))
            }
            var then = ErrorPolicy.abort
            if Lua.rawField(L, idx, "then") != LUA_TNIL {
                switch parse(L, -1) {
                case .success(.retry): return .failure(Invalid(message: "\(expected) (\"then\" cannot retry again)"))
                case .success(let p): then = p
                case .failure(let m): return .failure(m)
                }
            }
            return .success(.retry(times: Int(times), backoff: backoff, then: then))
        default:
            return .failure(Invalid(message: "\(expected) (got a \(Lua.typeName(L, idx)))"))
        }
    }

    var name: String {
        switch self {
        case .abort: return "abort"
        case .skip: return "skip"
        case .deadLetter: return "dead_letter"
        case .retry(let n, _, let then): return "retry \(n) then \(then.name)"
        }
    }
}

/// A registered stage: the functions of its definition table, as registry references.
final class StageDefinition {
    let name: String
    let process: Int32
    let open: Int32
    let close: Int32
    /// `flush(ctx, why)`: runs at every barrier (docs/ARCHITECTURE.md, "Barriers and
    /// checkpoints"); LUA_NOREF when the stage has none.
    let flush: Int32
    let policy: ErrorPolicy?
    /// `limits = { ... }` (Limits.swift): merged over the pipeline's when the run opens.
    var limits: StageLimits?
    /// Registry reference of the definition table (returned to the script).
    let table: Int32
    /// Where it was registered (`job.lua:3`), when Lua knows.
    let site: String?

    init(name: String, process: Int32, open: Int32, close: Int32, flush: Int32 = LUA_NOREF, policy: ErrorPolicy?,
         table: Int32, site: String? = nil) {
        self.name = name
        self.process = process
        self.open = open
        self.close = close
        self.flush = flush
        self.policy = policy
        self.table = table
        self.site = site
    }
}

/// A registered pipeline: stages (with their config) and nested pipelines, in order.
package final class PipelineDefinition {
    enum Item {
        /// A stage, with the registry reference of its `ctx.config` table.
        case stage(StageDefinition, config: Int32)
        case pipeline(PipelineDefinition)
    }

    let name: String
    let items: [Item]
    let policy: ErrorPolicy?
    /// `limits = { ... }`: for its stages (and nested pipelines') that set none.
    var limits: StageLimits?
    /// Where it was registered (`job.lua:9`), when Lua knows.
    let site: String?
    /// `partition_by = "user.id"`: with workers, events with the same value there go to
    /// the same worker (Workers/Coordinator.swift).
    var partitionBy: PartitionKey?
    /// `ordered`: with workers, whether the output keeps input order (true) or is written
    /// as events finish (false). Nil (not said): input order when reading a file or a
    /// stream; in `scopelua serve`, each request's order (see `PipelineRun.ordersOutput`).
    var ordered: Bool?

    init(name: String, items: [Item], policy: ErrorPolicy?, site: String? = nil) {
        self.name = name
        self.items = items
        self.policy = policy
        self.site = site
    }

    /// Every stage, depth first, in event order (as a run opens them).
    var allStages: [StageDefinition] {
        items.flatMap { item -> [StageDefinition] in
            switch item {
            case .stage(let s, _): return [s]
            case .pipeline(let p): return p.allStages
            }
        }
    }

    /// The limits each stage runs under (its own over its pipelines'), as `allStages`
    /// orders them; nil for a stage without any.
    func allStageLimits(inherited: StageLimits? = nil) -> [StageLimits?] {
        let mine = limits?.over(inherited) ?? inherited
        return items.flatMap { item -> [StageLimits?] in
            switch item {
            case .stage(let s, _):
                let l = s.limits?.over(mine) ?? mine
                return [l.flatMap { $0.isEmpty ? nil : $0 }]
            case .pipeline(let p): return p.allStageLimits(inherited: mine)
            }
        }
    }

    /// Every stage, depth first, in event order.
    var stageCount: Int {
        items.reduce(0) { n, item in
            switch item {
            case .stage: return n + 1
            case .pipeline(let p): return n + p.stageCount
            }
        }
    }
}

/// The stages and pipelines a script registered, by name.
package final class PipelineRegistry {
    var stages: [String: StageDefinition] = [:]
    package var pipelines: [String: PipelineDefinition] = [:]
    /// Registration order, for "the script's pipeline" when there is only one.
    package var pipelineOrder: [String] = []
    /// Definition tables and pipeline objects by identity (kept alive by references).
    var stagesByTable: [UnsafeRawPointer?: StageDefinition] = [:]
    var pipelinesByTable: [UnsafeRawPointer?: PipelineDefinition] = [:]
    var objects: [Int32] = []
    /// Whether a name registered again replaces the first definition (the REPL, where
    /// people redefine as they go, saying so) instead of being an error (a script,
    /// where a second `stage "enrich"` is a mistake that would silently win).
    package var allowsRedefinition = false

    /// Registered pipelines that no other registered pipeline contains, in order.
    var outermostPipelines: [String] {
        var nested = Set<ObjectIdentifier>()
        for p in pipelines.values {
            for case .pipeline(let inner) in p.items { nested.insert(ObjectIdentifier(inner)) }
        }
        return pipelineOrder.filter { name in pipelines[name].map { !nested.contains(ObjectIdentifier($0)) } ?? false }
    }
}
