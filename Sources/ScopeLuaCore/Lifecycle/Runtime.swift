import CLua
import CScopeLua

#if canImport(Glibc)
import Glibc
#endif

/// Options a host sets when it creates a runtime.
public struct RuntimeOptions {
    /// Print every acquire and release to the diagnostics sink.
    public var trace = false
    /// Where warnings (leaks), traces and release errors that cannot travel with an
    /// error go. Defaults to stderr.
    public var diagnostics: (String) -> Void = { line in
        sl_eprint(line)
    }
    /// Extra directory holding Lua modules shipped with scopelua (`stdlib/`); found
    /// automatically when nil.
    public var stdlibPath: String?
    /// `--memory-limit`: what Lua code may allocate in the state, in bytes (nil: no
    /// limit). Beyond it, Lua code gets "not enough memory" (sl_alloc).
    public var memoryLimit: Int?
    /// The run's shared dictionaries (`shared.dict`). A class: every copy of these options
    /// shares the one store, so the runtimes of `--workers N`, each created with a copy of
    /// the main runtime's options, see the same data (ARCHITECTURE.md, "Shared
    /// dictionaries"). Give a runtime `SharedStore()` of its own to keep it apart.
    public var shared = SharedStore()
    /// `--sandbox`: what scripts may touch (files, commands, the environment, hosts,
    /// native code); nil (the default) allows everything, as stock Lua does. Copied with
    /// the options, so every worker of a run gets the same (README, "Permissions").
    public var permissions: Permissions?

    public init() {}
}

/// One Lua state and the tree of scopes that owns everything its scripts acquire.
///
/// Confined to the thread that created it (ARCHITECTURE.md rule 6): it is deliberately
/// not `Sendable`. The `lua_State` reaches back to it through `lua_getextraspace`.
public final class Runtime {
    /// The main thread's state.
    public let L: LuaState
    package var options: RuntimeOptions {
        didSet { info.pointee.trace = options.trace ? 1 : 0 }
    }
    /// The state's C-side data (counts, caches and the fast paths' view of the runtime).
    @usableFromInline package let info: UnsafeMutablePointer<sl_StateInfo>
    package let ledger: Ledger
    /// The pool of handle records (shared with the scopes, see `RecordArena`).
    package let arena = RecordArena()
    /// The run's root scope, and the scope acquisitions go to right now.
    package let root: Scope
    @inlinable package var current: Scope {
        get { currentScope }
        set {
            currentScope = newValue
            info.pointee.current = newValue.registry
        }
    }
    @usableFromInline var currentScope: Scope
    var closed = false

    /// Metatable registry references and identities, indexed by `ResourceKind.index`;
    /// then, at `ResourceKind.count + index`, the same metatable without `__gc`, which a
    /// handle gets once released so the collector need not call its finalizer.
    @usableFromInline package var metatableRefs = [Int32](repeating: LUA_NOREF, count: 2 * ResourceKind.count)
    /// Records the identity of a kind's metatable (`released`: its twin) where the C
    /// side checks handles against it (`sl_StateInfo.metatables`).
    func setMetatableIdentity(_ kind: ResourceKind, released: Bool, _ p: UnsafeRawPointer?) {
        let i = Int(released ? SL_MAXKINDS : 0) + kind.index
        withUnsafeMutableBytes(of: &info.pointee.metatables) { raw in
            raw.bindMemory(to: UnsafeRawPointer?.self)[i] = p
        }
    }
    /// Kind names by `ResourceKind.index`, for handles whose record is gone.
    package var kindNames: [String] = (0..<ResourceKind.count).map { ResourceKind(rawValue: Int32($0))?.name ?? "resource" }
    /// Where `log.*` lines come from, when a running pipeline knows (`stage (line N)`).
    package var logContext: (() -> String?)?
    /// Leaks so far by acquisition site and kind (see `noteLeak`).
    var leakSites: [LeakSite: Int] = [:]
    var leakOrder: [LeakSite] = []
    /// Interned scope paths, for "released at the end of scope ..." after the scope is gone.
    var scopePaths: [String] = []
    var scopePathIndex: [String: Int] = [:]

    /// Interned script sources for `Site`s.
    var sourceNames: [String] = []
    var sourceKeys: [String: Int32] = [:]
    @usableFromInline var siteScratch = sl_Site()

    /// The `timer.measure` labels: label string → index into the ledger's statistics.
    package var timerLabelsRef: Int32 = LUA_NOREF
    /// The modules installed above the core, in order (see `RuntimeModule`).
    package let modules: [any RuntimeModule.Type]
    /// The state each module keeps on the runtime, by type (see `state(_:default:)`).
    @usableFromInline package var moduleStates: [ObjectIdentifier: AnyObject] = [:]

    /// A runtime with the core bindings and `modules`, installed in order. The runtime a
    /// host normally wants, with every standard module, is `Runtime(options:)` (ScopeLua).
    package init(options: RuntimeOptions, modules: [any RuntimeModule.Type]) {
        guard let state = sl_newstate() else {
            sl_eprint("scopelua: cannot create a Lua state (out of memory)")
            exit(70)
        }
        L = state
        info = sl_info(state)
        self.options = options
        self.modules = modules
        ledger = Ledger(info)
        root = Scope(name: "run", parent: nil, arena: arena)
        currentScope = root
        info.pointee.pool = arena.pool
        info.pointee.releaseleaks = { L in
            let (rt, L) = Runtime.from(L)
            rt.releaseLeaks(L)
            return 0
        }
        info.pointee.runtime = Unmanaged.passUnretained(self).toOpaque()
        info.pointee.trace = options.trace ? 1 : 0
        info.pointee.current = root.registry
        // The tables pinning the keys of the site and label caches (see sl_CacheEntry).
        lua_createtable(state, Int32(SL_CACHE), 0)
        info.pointee.sitepins = luaL_ref(state, Lua.registry)
        lua_createtable(state, Int32(SL_CACHE), 0)
        info.pointee.labelpins = luaL_ref(state, Lua.registry)
        luaL_openlibs(L)
        // coroutine.resume / wrap that carry a stop and a call's limits into coroutines,
        // and a debug.sethook that cannot lift the limits (CScopeLua/limits.c).
        sl_limits_install(L)
        Bindings.install(self, modules: modules)
        // lua.c runs scripts with the generational collector; so do we (rule 5), and it
        // keeps short-lived handles cheap.
        _ = sl_gcgenerational(L)
        if let limit = options.memoryLimit, limit > 0 { sl_setmemlimit(L, limit) }
    }

    deinit {
        close()
        sl_freeinfo(info)
    }

    /// The runtime that owns `L` (any of its threads).
    @inlinable @inline(__always)
    package static func from(_ L: LuaState?) -> (Runtime, LuaState) {
        let L = L.unsafelyUnwrapped  // Lua always passes its state to a C function
        let raw = sl_info(L).pointee.runtime.unsafelyUnwrapped
        return (Unmanaged<Runtime>.fromOpaque(raw).takeUnretainedValue(), L)
    }

    /// The runtime that owns `L`, for hot paths that must not pay for reference
    /// counting: the runtime outlives every call into it from its own state.
    @inlinable @inline(__always)
    package static func unretained(_ L: LuaState) -> Unmanaged<Runtime> {
        Unmanaged<Runtime>.fromOpaque(sl_info(L).pointee.runtime.unsafelyUnwrapped)
    }

    func newID() -> Int {
        info.pointee.lastid += 1
        return Int(info.pointee.lastid)
    }

    // MARK: - Reporting

    /// Resource counts so far.
    public var resourceCounts: ResourceCounts { ledger.counts }

    /// Timer statistics so far, in label order of first use.
    public var timers: [TimerSummary] { ledger.timers }
}
