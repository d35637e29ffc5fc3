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

    public init() {}
}

/// One Lua state and the tree of scopes that owns everything its scripts acquire.
///
/// Confined to the thread that created it (ARCHITECTURE.md rule 6): it is deliberately
/// not `Sendable`. The `lua_State` reaches back to it through `lua_getextraspace`.
public final class Runtime {
    /// The main thread's state.
    public let L: LuaState
    var options: RuntimeOptions {
        didSet { info.pointee.trace = options.trace ? 1 : 0 }
    }
    /// The state's C-side data (counts, caches and the fast paths' view of the runtime).
    let info: UnsafeMutablePointer<sl_StateInfo>
    let ledger: Ledger
    /// The pool of handle records (shared with the scopes, see `RecordArena`).
    let arena = RecordArena()
    /// The run's root scope, and the scope acquisitions go to right now.
    let root: Scope
    var current: Scope {
        didSet { info.pointee.current = current.registry }
    }
    private var closed = false

    /// Metatable registry references and identities, indexed by `ResourceKind.index`;
    /// then, at `ResourceKind.count + index`, the same metatable without `__gc`, which a
    /// handle gets once released so the collector need not call its finalizer.
    var metatableRefs = [Int32](repeating: LUA_NOREF, count: 2 * ResourceKind.count)
    /// Records the identity of a kind's metatable (`released`: its twin) where the C
    /// side checks handles against it (`sl_StateInfo.metatables`).
    func setMetatableIdentity(_ kind: ResourceKind, released: Bool, _ p: UnsafeRawPointer?) {
        let i = Int(released ? SL_MAXKINDS : 0) + kind.index
        withUnsafeMutableBytes(of: &info.pointee.metatables) { raw in
            raw.bindMemory(to: UnsafeRawPointer?.self)[i] = p
        }
    }
    /// Kind names by `ResourceKind.index`, for handles whose record is gone.
    var kindNames: [String] = (0..<ResourceKind.count).map { ResourceKind(rawValue: Int32($0))?.name ?? "resource" }
    /// Where `log.*` lines come from, when a running pipeline knows (`stage (line N)`).
    var logContext: (() -> String?)?
    /// Leaks so far by acquisition site and kind (see `noteLeak`).
    var leakSites: [LeakSite: Int] = [:]
    var leakOrder: [LeakSite] = []
    /// Interned scope paths, for "released at the end of scope ..." after the scope is gone.
    private var scopePaths: [String] = []
    private var scopePathIndex: [String: Int] = [:]

    /// Interned script sources for `Site`s.
    private var sourceNames: [String] = []
    private var sourceKeys: [String: Int32] = [:]
    private var siteScratch = sl_Site()

    /// Per-kind state that binding files keep on the runtime.
    var timerLabelsRef: Int32 = LUA_NOREF
    /// Registered stages and pipelines, and the pipeline running now (if any).
    let pipelines = PipelineRegistry()
    var activeRun: PipelineRun?
    /// Pipelines run from Lua (`p:run{}`) so far.
    var pipelineRuns = 0
    var stageMetatable: UnsafeRawPointer?
    var pipelineMetatable: UnsafeRawPointer?
    /// Timers from timer.every / timer.after, fired by a running pipeline.
    var scheduled: [ScheduledTimer] = []
    /// JSON for the runner and the REPL.
    let json = JSONCodec()
    /// Identity of the metatable of `sql.blob` values.
    var blobMetatable: UnsafeRawPointer?
    var adopted = AdoptedFiles()


    public init(options: RuntimeOptions = RuntimeOptions()) {
        guard let state = sl_newstate() else {
            sl_eprint("scopelua: cannot create a Lua state (out of memory)")
            exit(70)
        }
        L = state
        info = sl_info(state)
        self.options = options
        ledger = Ledger(info)
        root = Scope(name: "run", parent: nil, arena: arena)
        current = root
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
        Bindings.install(self)
        // lua.c runs scripts with the generational collector; so do we (rule 5), and it
        // keeps short-lived handles cheap.
        _ = sl_gcgenerational(L)
    }

    deinit {
        close()
        sl_freeinfo(info)
    }

    /// The runtime that owns `L` (any of its threads).
    @inline(__always)
    static func from(_ L: LuaState?) -> (Runtime, LuaState) {
        let L = L.unsafelyUnwrapped  // Lua always passes its state to a C function
        let raw = sl_info(L).pointee.runtime.unsafelyUnwrapped
        return (Unmanaged<Runtime>.fromOpaque(raw).takeUnretainedValue(), L)
    }

    /// The runtime that owns `L`, for hot paths that must not pay for reference
    /// counting: the runtime outlives every call into it from its own state.
    @inline(__always)
    static func unretained(_ L: LuaState) -> Unmanaged<Runtime> {
        Unmanaged<Runtime>.fromOpaque(sl_info(L).pointee.runtime.unsafelyUnwrapped)
    }

    func newID() -> Int {
        info.pointee.lastid += 1
        return Int(info.pointee.lastid)
    }

    // MARK: - Sites

    /// The script position of the innermost Lua function on the stack (the one that
    /// called into the runtime). Stack: 0.
    @inline(__always)
    func currentSite(_ L: LuaState) -> Site {
        switch sl_site(L, &siteScratch) {
        case 0:
            return .unknown
        case 1:
            return Site(source: siteScratch.source, line: siteScratch.line)
        default:
            let source = internSiteSource()
            sl_site_remember(L, source)
            return Site(source: source, line: siteScratch.line)
        }
    }

    private func internSiteSource() -> Int32 {
        let short = withUnsafeBytes(of: &siteScratch.short_src) { raw in
            String(cString: raw.bindMemory(to: CChar.self).baseAddress.unsafelyUnwrapped)
        }
        if let known = sourceKeys[short] { return known }
        let index = Int32(sourceNames.count)
        sourceNames.append(short)
        sourceKeys[short] = index
        return index
    }

    func describe(_ site: Site) -> String {
        guard site.source >= 0, Int(site.source) < sourceNames.count else { return "?" }
        return "\(sourceNames[Int(site.source)]):\(site.line)"
    }

    /// Kind name and id: `file#3`.
    func shortName(_ h: Handle) -> String {
        "\(kindNames[Int(h.pointee.kind)])#\(h.pointee.id)"
    }

    /// The label of an open handle: its Swift state's, or a timer's interned label.
    func label(_ h: Handle) -> String? {
        if let r = h.pointee.resource { return r.label }
        if h.pointee.kind == ResourceKind.timer.rawValue {
            let i = Int(h.pointee.aux)
            return i >= 0 && i < ledger.timerLabels.count ? ledger.timerLabels[i] : nil
        }
        return nil
    }

    /// `file#3 "out.log"` for an open handle (or a plain kind in any state).
    func describe(_ h: Handle) -> String {
        if let label = label(h) { return "\(shortName(h)) \"\(label)\"" }
        return shortName(h)
    }

    /// `file#3 "out.log"` for the handle userdata at `idx`, open or released: a released
    /// handle's label is its user value. Stack: 0.
    func describeHandle(_ h: Handle, _ L: LuaState, _ idx: Int32) -> String {
        if h.pointee.isOpen || h.pointee.kind == ResourceKind.timer.rawValue { return describe(h) }
        guard lua_getiuservalue(L, idx, 1) == LUA_TSTRING, let label = Lua.string(L, -1) else {
            sl_pop(L, 1)
            return shortName(h)
        }
        sl_pop(L, 1)
        return "\(shortName(h)) \"\(label)\""
    }

    func internPath(_ scope: Scope) -> Int {
        if let i = scope.pathIndex { return i }
        let path = scope.path
        let i = scopePathIndex[path] ?? {
            scopePaths.append(path)
            scopePathIndex[path] = scopePaths.count - 1
            return scopePaths.count - 1
        }()
        scope.pathIndex = i
        return i
    }

    /// How a released handle was released, from its own memory.
    func describeRelease(_ h: Handle) -> String {
        let p = h.pointee
        switch p.how {
        case Int32(SL_BY_HANDLE): return "released at \(describe(Site(source: p.relsource, line: p.relline)))"
        case Int32(SL_BY_CLOSE):
            return "released by <close> at the end of the block that acquired it at \(describe(p.site))"
        case Int32(SL_BY_SCOPE):
            let path = p.detail >= 0 && Int(p.detail) < scopePaths.count ? scopePaths[Int(p.detail)] : "?"
            return "released at the end of scope \(path)"
        case Int32(SL_BY_PARENT):
            let kind = p.relsource >= 0 && Int(p.relsource) < kindNames.count ? kindNames[Int(p.relsource)] : "resource"
            return "released with \(kind)#\(p.detail)"
        case Int32(SL_BY_GC): return "reclaimed by the garbage collector"
        default: return "open"
        }
    }

    func diagnose(_ line: String) {
        options.diagnostics(line)
    }

    // MARK: - Acquire and release

    /// Creates a handle of `kind`, registers it in `scope` (default: the current one)
    /// and pushes it. `resource` is the kind's Swift state, if it has any; its label is
    /// the Lua string at `labelIndex` when given. Stack: +1.
    @discardableResult
    func acquire(_ kind: ResourceKind, _ resource: Resource?, _ L: LuaState, site: Site,
                 in scope: Scope? = nil, labelIndex: Int32 = 0, aux: Int32 = 0) -> Handle {
        let labelIndex = labelIndex == 0 ? 0 : lua_absindex(L, labelIndex)
        let h = sl_rec_new(arena.pool).unsafelyUnwrapped
        h.pointee = sl_Handle(
            record: resource.map { Unmanaged.passRetained($0).toOpaque() }, scope: nil,
            id: Int64(newID()), start: sl_monotonic_ns(), value: 0, detail: 0,
            kind: Int32(kind.index), how: Int32(SL_OPEN), slot: -1, aux: aux,
            source: site.source, line: site.line, relsource: 0, relline: 0, pins: 0, boxgone: 0)
        _ = sl_pushbox(L, h, resource == nil ? 0 : 1)
        if let resource {
            if labelIndex != 0 {
                lua_pushvalue(L, labelIndex)
            } else if let label = resource.label {
                Lua.push(L, label)
            } else {
                lua_pushnil(L)
            }
            lua_setiuservalue(L, -2, 1)
        }
        lua_rawgeti(L, Lua.registry, lua_Integer(metatableRefs[kind.index]))
        _ = lua_setmetatable(L, -2)
        let owner = scope ?? current
        owner.add(h)
        info.pointee.counts.acquired += 1
        if options.trace { traceAcquire(h, owner) }
        return h
    }

    /// Makes `child` owned by `owner` as well as by its scope: `owner` releases it first.
    func adopt(_ child: Handle, by owner: Handle) {
        guard let r = owner.pointee.resource, let c = child.pointee.resource else { return }
        c.ownerHandle = owner
        r.children.append(child)
    }

    /// Releases the handle's resource once: marks it released, takes it out of its scope
    /// and owner, releases its children (newest first), then runs its release handler.
    /// Returns the number of failures, each pushed on the stack as an error object.
    ///
    /// `h` is pinned for the duration (release handlers may run Lua, which may collect
    /// the handle's box), and may be freed when this returns: callers do not touch it
    /// afterwards except through a box on the stack (`retire`).
    @discardableResult
    func release(_ h: Handle, _ L: LuaState, cause: ReleaseCause, error errIndex: Int32) -> Int32 {
        guard h.pointee.isOpen else { return 0 }
        sl_rec_pin(h)
        defer { sl_rec_unpin(arena.pool, h) }
        switch cause {
        case .closed:
            h.pointee.how = Int32(SL_BY_CLOSE)
            info.pointee.counts.released_by_handle += 1
        case .handle(let site):
            h.pointee.how = Int32(SL_BY_HANDLE)
            h.pointee.relsource = site.source
            h.pointee.relline = site.line
            info.pointee.counts.released_by_handle += 1
        case .scopeEnd(let scope):
            h.pointee.how = Int32(SL_BY_SCOPE)
            h.pointee.detail = Int64(internPath(scope))
            info.pointee.counts.released_by_scope += 1
        case .parent(let owner):
            h.pointee.how = Int32(SL_BY_PARENT)
            h.pointee.relsource = owner.pointee.kind
            h.pointee.detail = owner.pointee.id
            info.pointee.counts.released_by_scope += 1
        case .collected:
            h.pointee.how = Int32(SL_BY_GC)
            info.pointee.counts.leaked += 1
        }
        sl_registry_remove(h)
        guard let raw = h.pointee.record else {
            if options.trace { traceRelease(h, cause) }
            closePlain(h)
            return 0
        }
        let r = Unmanaged<Resource>.fromOpaque(raw).takeUnretainedValue()
        if let owner = r.ownerHandle {
            r.ownerHandle = nil
            if let o = owner.pointee.resource, let i = o.children.lastIndex(of: h) { o.children.remove(at: i) }
        }
        if options.trace { traceRelease(h, cause) }
        var failures: Int32 = 0
        while !r.children.isEmpty, let child = r.children.popLast() {
            failures += release(child, L, cause: .parent(h), error: errIndex)
        }
        Lua.reserve(L, 8, for: "a release handler")
        if !r.close(self, L, h, error: errIndex) {
            info.pointee.counts.release_errors += 1
            failures += 1
        }
        h.pointee.record = nil
        Unmanaged<Resource>.fromOpaque(raw).release()
        return failures
    }

    /// Release handlers of kinds without Swift state.
    @inline(__always)
    private func closePlain(_ h: Handle) {
        if h.pointee.kind == ResourceKind.timer.rawValue {
            let elapsed = sl_elapsed_ns(h.pointee.start)
            h.pointee.value = Int64(elapsed)
            ledger.recordTimer(Int(h.pointee.aux), nanos: elapsed)
        }
    }

    @inline(never)
    private func traceAcquire(_ h: Handle, _ scope: Scope) {
        diagnose("scopelua: trace: acquire \(describe(h)) in \(scope.path) at \(describe(h.pointee.site))")
    }

    @inline(never)
    private func traceRelease(_ h: Handle, _ cause: ReleaseCause) {
        let how: String
        switch cause {
        case .handle(let site): how = "at \(describe(site))"
        case .closed: how = "by <close>"
        case .scopeEnd(let s): how = "by the end of \(s.path)"
        case .collected: how = "by the garbage collector"
        case .parent(let owner): how = "with \(describe(owner))"
        }
        diagnose("scopelua: trace: release \(describe(h)) \(how)")
    }

    /// Ends `scope`: releases everything still open in it, newest first, passing the
    /// error at `errIndex` (0: none) to each release handler. A failing release does not
    /// stop the others, and the ones after it receive its error when the scope had none
    /// (as Python's ExitStack passes a failing exit's exception on): a defer learns that
    /// the scope is failing. Returns the number of failures pushed on the stack.
    func endScope(_ scope: Scope, _ L: LuaState, error errIndex: Int32) -> Int32 {
        if info.pointee.leakhead < info.pointee.nleaks { releaseLeaks(L) }
        var failures: Int32 = 0
        var passed = errIndex
        while let h = scope.popNewest() {
            let failed = release(h, L, cause: .scopeEnd(scope), error: passed)
            if failed > 0, passed == 0 { passed = lua_gettop(L) - failed + 1 }
            failures += failed
        }
        return failures
    }

    /// Applies rule 4 to an error and the release failures on top of the stack.
    ///
    /// `primary` is the stack index of the body's error (0 if the body succeeded);
    /// `failures` error objects sit on top. Leaves exactly one error object on top in
    /// place of the failures and returns true, or returns false (stack unchanged) when
    /// there is nothing to raise. A string error gets the release errors appended;
    /// a plain table gets them in a `release_errors` list; any other error object keeps
    /// its identity and the release errors go to the diagnostics sink.
    func mergeErrors(_ L: LuaState, primary: Int32, failures: Int32) -> Bool {
        if failures == 0 {
            guard primary != 0 else { return false }
            lua_pushvalue(L, primary)
            return true
        }
        let top = lua_gettop(L)
        let first = top - failures + 1
        let main = primary != 0 ? primary : first
        var attached: [String] = []
        for i in first...top where i != main {
            attached.append(Lua.describe(L, i))
        }
        lua_pushvalue(L, main)
        if !attached.isEmpty {
            switch lua_type(L, -1) {
            case LUA_TSTRING:
                let text = Lua.describe(L, -1) + attached.map { "\n\trelease error: \($0)" }.joined()
                sl_pop(L, 1)
                Lua.push(L, text)
            case LUA_TTABLE where lua_getmetatable(L, -1) == 0:
                Lua.rawField(L, -1, "release_errors")
                if lua_type(L, -1) != LUA_TTABLE {
                    sl_pop(L, 1)
                    lua_createtable(L, Int32(attached.count), 0)
                    lua_pushvalue(L, -1)
                    Lua.setField(L, -3, "release_errors")
                }
                var n = lua_rawlen(L, -1)
                for message in attached {
                    n += 1
                    Lua.push(L, message)
                    lua_rawseti(L, -2, lua_Integer(n))
                }
                sl_pop(L, 1)
            default:
                if lua_type(L, -1) == LUA_TTABLE { sl_pop(L, 1) }  // the metatable
                for message in attached {
                    diagnose("scopelua: release error (the error being raised is a \(Lua.typeName(L, -1)) and cannot carry it): \(message)")
                }
            }
        }
        // Replace the failures by the merged error.
        lua_copy(L, -1, first)
        lua_settop(L, first)
        return true
    }

    /// Detaches the released handle's box at `idx` from its record (which may be freed:
    /// `h` is not to be used afterwards) and gives it the metatable without a finalizer.
    /// Stack: 0.
    @inline(__always)
    func retire(_ h: Handle, _ L: LuaState, _ idx: Int32) {
        let kind = Int(h.pointee.kind)
        guard sl_detach(L, idx) != 0 else { return }
        lua_rawgeti(L, Lua.registry, lua_Integer(metatableRefs[ResourceKind.count + kind]))
        _ = lua_setmetatable(L, idx)
    }

    /// Releases the handles whose boxes the collector reclaimed while they were open
    /// (leaks), queued by the finalizer. Runs only at safe points: on entry from Lua
    /// into the runtime, at the end of a scope, between events; never from inside an
    /// allocation. Warns with the acquisition site and counts each. Stack: 0.
    func releaseLeaks(_ L: LuaState) {
        while let h = sl_leak_pop(L) {
            if h.pointee.isOpen {
                noteLeak(h)
                let base = lua_gettop(L)
                let failures = release(h, L, cause: .collected, error: 0)
                for i in 0..<failures {
                    diagnose("scopelua: release error: \(Lua.describe(L, base + 1 + i))")
                }
                lua_settop(L, base)
            }
            sl_rec_unpin(arena.pool, h)
        }
    }

    /// The message for using the released handle at `idx`, positioned at the caller.
    func pushUseAfterRelease(_ h: Handle, _ L: LuaState, _ idx: Int32) {
        Lua.pushError(L, "\(describeHandle(h, L, idx)) used after release (\(describeRelease(h)))")
    }

    // MARK: - Handles

    /// The handle at `idx` if it is one of the runtime's (of `kind`, when given), open or
    /// released. Stack: 0.
    @inline(__always)
    func handle(at idx: Int32, _ L: LuaState, kind: ResourceKind? = nil) -> Handle? {
        let h = sl_tohandle(L, idx)
        if let kind, let h, h.pointee.kind != Int32(kind.index) { return nil }
        return h
    }

    /// Pushes `{ id, kind, label, site, scope, age }` for an open handle. Stack: +1.
    func pushDescriptor(_ h: Handle, _ L: LuaState) {
        lua_createtable(L, 0, 6)
        lua_pushinteger(L, lua_Integer(h.pointee.id))
        Lua.setField(L, -2, "id")
        Lua.push(L, kindNames[Int(h.pointee.kind)])
        Lua.setField(L, -2, "kind")
        if let label = label(h) {
            Lua.push(L, label)
            Lua.setField(L, -2, "label")
        }
        Lua.push(L, describe(h.pointee.site))
        Lua.setField(L, -2, "site")
        Lua.push(L, h.pointee.owningScope?.path ?? "?")
        Lua.setField(L, -2, "scope")
        lua_pushnumber(L, Double(sl_elapsed_ns(h.pointee.start)) / 1e9)
        Lua.setField(L, -2, "age")
    }

    /// Warns about a leak the first time its acquisition site leaks a resource of its
    /// kind; later ones are counted and summed up when the runtime closes
    /// (`summarizeLeaks`), so a forgotten `<close>` in a loop is one line, not thousands.
    func noteLeak(_ h: Handle) {
        let key = LeakSite(kind: h.pointee.kind, site: h.pointee.site)
        let seen = leakSites[key, default: 0]
        leakSites[key] = seen + 1
        guard seen == 0 else { return }
        leakOrder.append(key)
        diagnose("scopelua: leak: \(describe(h)) acquired at \(describe(h.pointee.site)) was never released (reclaimed by the garbage collector)")
    }

    /// `scopelua: 2998 more leaks of files acquired at job.lua:4`, per site that leaked
    /// more than once, in the order the sites first leaked.
    func summarizeLeaks() {
        for key in leakOrder {
            guard let count = leakSites[key], count > 1 else { continue }
            let kind = ResourceKind(rawValue: key.kind)?.plural ?? "resources"
            diagnose("scopelua: \(count - 1) more leak\(count == 2 ? "" : "s") of \(kind) acquired at \(describe(key.site))")
        }
        leakSites = [:]
        leakOrder = []
    }

    // MARK: - Running code

    /// Compiles `source` as a chunk named `name` (`=name` shows as is, `@file` as a file).
    public func load(_ source: String, name: String) throws(LuaError) {
        let status = source.withCString { p in name.withCString { sl_loadbuffer(L, p, strlen(p), $0) } }
        if status != LUA_OK {
            let message = Lua.describe(L, -1)
            sl_pop(L, 1)
            throw LuaError(kind: .syntax(incomplete: message.hasSuffix("<eof>")), message: message)
        }
    }

    /// Calls the function below `nargs` arguments on top of the stack in the current
    /// scope, with a traceback taken where an error happens. Leaves the results (any
    /// number) on the stack; on error leaves nothing and throws.
    public func call(nargs: Int32, base: Int32? = nil) throws(LuaError) {
        let fnIndex = lua_gettop(L) - nargs
        lua_pushcclosure(L, sl_capturetraceback, 0)
        lua_rotate(L, fnIndex, 1)
        let status = sl_pcall(L, nargs, LUA_MULTRET, fnIndex)
        sl_remove(L, fnIndex)
        if info.pointee.leakhead < info.pointee.nleaks { releaseLeaks(L) }  // a safe point
        if status != LUA_OK {
            let error = takeError(L)
            throw error
        }
    }

    /// The error object at `idx` as a `LuaError`, leaving the stack as it was.
    func takeError(copyOf idx: Int32, _ L: LuaState, traceback: String? = nil) -> LuaError {
        lua_pushvalue(L, idx)
        return takeError(L, traceback: traceback)
    }

    /// Pops the error object on top and turns it into a `LuaError` with the traceback
    /// captured for that very object (see `takeTraceback`), or the one given.
    func takeError(_ L: LuaState, traceback given: String? = nil) -> LuaError {
        let traceback = given ?? takeTraceback(L, -1)  // before __tostring runs Lua code
        var message = Lua.describe(L, -1)
        let t = lua_type(L, -1)
        if t != LUA_TSTRING, t != LUA_TNUMBER {
            // lua.c's wording for error objects that cannot say what they are.
            if luaL_getmetafield(L, -1, "__tostring") == LUA_TNIL {
                message = "(error object is a \(Lua.typeName(L, -1)) value)"
            } else {
                sl_pop(L, 1)
            }
        }
        sl_pop(L, 1)
        return LuaError(kind: .runtime, message: message, traceback: traceback)
    }

    /// The traceback the message handler captured for the error object at `idx` (by
    /// identity), or nil; the runtime forgets it either way. Take it right after the
    /// protected call failed: releases run Lua code that may fail and capture its own.
    func takeTraceback(_ L: LuaState, _ idx: Int32) -> String? {
        guard sl_taketraceback(L, idx) != 0 else { return nil }
        defer { sl_pop(L, 1) }
        return Lua.string(L, -1)
    }

    /// Runs `source` in the current scope and returns its results, converted.
    @discardableResult
    public func execute(_ source: String, name: String = "=chunk") throws(LuaError) -> [LuaValue] {
        let base = lua_gettop(L)
        try load(source, name: name)
        try call(nargs: 0)
        defer { lua_settop(L, base) }
        return (base + 1 ..< lua_gettop(L) + 1).map { LuaValue(L, $0) }
    }

    /// Ends the root scope (releasing everything still open, newest first) with the
    /// given error message as the error passed to release handlers. Returns the release
    /// failures, described. Idempotent.
    @discardableResult
    public func releaseAll(error: String? = nil) -> [String] {
        let base = lua_gettop(L)
        defer { lua_settop(L, base) }
        var errIndex: Int32 = 0
        if let error {
            Lua.push(L, error)
            errIndex = lua_gettop(L)
        }
        current = root
        let failures = endScope(root, L, error: errIndex)
        let top = lua_gettop(L)
        return (0..<failures).map { Lua.describe(L, top - failures + 1 + $0) }
    }

    /// Releases everything, reports failures to the diagnostics sink and closes the
    /// Lua state. Idempotent.
    public func close() {
        guard !closed else { return }
        sweepAdoptedFiles()
        let idle = scheduled.filter { $0.handle != nil && $0.fired == 0 }
        if !idle.isEmpty {
            let sites = idle.compactMap { $0.handle.map { describe($0.pointee.site) } }.joined(separator: ", ")
            diagnose("scopelua: \(idle.count) timer\(idle.count == 1 ? " was" : "s were") scheduled but never fired (\(sites)): outside a pipeline, timers fire in timer.sleep and timer.loop")
        }
        for failure in releaseAll() {
            diagnose("scopelua: release error: \(failure)")
        }
        summarizeLeaks()
        closed = true
        sl_closestate(L)
    }

    // MARK: - Reporting

    /// Resource counts so far.
    public var resourceCounts: ResourceCounts { ledger.counts }

    /// Timer statistics so far, in label order of first use.
    public var timers: [TimerSummary] { ledger.timers }
}

/// A Lua value converted for Swift callers (tests, the REPL).
public enum LuaValue: Equatable, CustomStringConvertible, Sendable {
    case `nil`
    case boolean(Bool)
    case integer(Int64)
    case number(Double)
    case string(String)
    /// Tables, functions, userdata and threads, as `tostring` shows them.
    case other(String)

    init(_ L: LuaState, _ idx: Int32) {
        switch lua_type(L, idx) {
        case LUA_TNIL, LUA_TNONE: self = .nil
        case LUA_TBOOLEAN: self = .boolean(lua_toboolean(L, idx) != 0)
        case LUA_TNUMBER:
            if lua_isinteger(L, idx) != 0 {
                self = .integer(lua_tointegerx(L, idx, nil))
            } else {
                self = .number(lua_tonumberx(L, idx, nil))
            }
        case LUA_TSTRING: self = .string(Lua.string(L, idx) ?? "")
        default: self = .other(Lua.describe(L, idx))
        }
    }

    public var description: String {
        switch self {
        case .nil: return "nil"
        case .boolean(let b): return String(b)
        case .integer(let i): return String(i)
        case .number(let d): return String(d)
        case .string(let s): return s
        case .other(let s): return s
        }
    }
}
