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
    var options: RuntimeOptions
    let ledger = Ledger()
    /// The run's root scope, and the scope acquisitions go to right now.
    let root: Scope
    var current: Scope
    private var nextID = 0
    private var closed = false

    /// Metatable registry references and identities, indexed by `ResourceKind.index`.
    var metatableRefs = [Int32](repeating: LUA_NOREF, count: ResourceKind.count)
    var metatablePointers = [UnsafeRawPointer?](repeating: nil, count: ResourceKind.count)
    /// Kind names by `ResourceKind.index`, for handles whose record is gone.
    var kindNames = [String](repeating: "resource", count: ResourceKind.count)
    /// Interned scope paths, for "released at the end of scope ..." after the scope is gone.
    private var scopePaths: [String] = []
    private var scopePathIndex: [String: Int] = [:]

    /// Interned script sources for `Site`s.
    private var sourceNames: [String] = []
    private var sourceKeys: [String: Int32] = [:]
    /// The source of the last site (pinned by the C side, see `sl_site`).
    private var lastSource: UnsafePointer<CChar>?
    private var lastSourceIndex: Int32 = -1
    private var siteScratch = sl_Site()

    /// Per-kind state that binding files keep on the runtime.
    var timerLabelsRef: Int32 = LUA_NOREF
    var adopted = AdoptedFiles()

    public init(options: RuntimeOptions = RuntimeOptions()) {
        guard let state = sl_newstate() else {
            sl_eprint("scopelua: cannot create a Lua state (out of memory)")
            exit(70)
        }
        L = state
        self.options = options
        root = Scope(name: "run", parent: nil)
        current = root
        sl_extraspace(L).storeBytes(of: Unmanaged.passUnretained(self).toOpaque(), as: UnsafeMutableRawPointer.self)
        luaL_openlibs(L)
        Bindings.install(self)
        // lua.c runs scripts with the generational collector; so do we (rule 5), and it
        // keeps short-lived handles cheap.
        _ = sl_gcgenerational(L)
    }

    deinit {
        close()
    }

    /// The runtime that owns `L` (any of its threads).
    @inline(__always)
    static func from(_ L: LuaState?) -> (Runtime, LuaState) {
        let L = L.unsafelyUnwrapped  // Lua always passes its state to a C function
        let raw = sl_extraspace(L).unsafelyUnwrapped.load(as: UnsafeMutableRawPointer.self)
        return (Unmanaged<Runtime>.fromOpaque(raw).takeUnretainedValue(), L)
    }

    func newID() -> Int {
        nextID += 1
        return nextID
    }

    // MARK: - Sites

    /// The script position of the innermost Lua function on the stack (the one that
    /// called into the runtime). Stack: 0.
    @inline(__always)
    func currentSite(_ L: LuaState) -> Site {
        guard sl_site(L, lastSource, &siteScratch) != 0 else { return .unknown }
        if siteScratch.source != lastSource {
            lastSource = siteScratch.source
            let short = withUnsafeBytes(of: &siteScratch.short_src) { raw in
                String(cString: raw.bindMemory(to: CChar.self).baseAddress.unsafelyUnwrapped)
            }
            if let known = sourceKeys[short] {
                lastSourceIndex = known
            } else {
                lastSourceIndex = Int32(sourceNames.count)
                sourceNames.append(short)
                sourceKeys[short] = lastSourceIndex
            }
        }
        return Site(source: lastSourceIndex, line: siteScratch.line)
    }

    func describe(_ site: Site) -> String {
        guard site.source >= 0, Int(site.source) < sourceNames.count else { return "?" }
        return "\(sourceNames[Int(site.source)]):\(site.line)"
    }

    /// `file#3 "out.log"`.
    func describe(_ r: Resource) -> String {
        if let label = r.label { return "\(r.kind.name)#\(r.id) \"\(label)\"" }
        return "\(r.kind.name)#\(r.id)"
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
    func describeRelease(_ h: UnsafeMutablePointer<sl_Handle>) -> String {
        let p = h.pointee
        switch p.how {
        case Int32(SL_BY_HANDLE): return "released at \(describe(Site(source: p.source, line: p.line)))"
        case Int32(SL_BY_SCOPE):
            let path = p.detail >= 0 && Int(p.detail) < scopePaths.count ? scopePaths[Int(p.detail)] : "?"
            return "released at the end of scope \(path)"
        case Int32(SL_BY_PARENT):
            return "released with \(kindNames[Int(p.source)])#\(p.detail)"
        case Int32(SL_BY_GC): return "reclaimed by the garbage collector"
        default: return "open"
        }
    }

    /// `file#3 "out.log"` for the handle at `idx`, open or not. Stack: 0.
    func describeHandle(_ h: UnsafeMutablePointer<sl_Handle>, _ L: LuaState, _ idx: Int32) -> String {
        let name = kindNames[Int(h.pointee.kind)]
        lua_getiuservalue(L, idx, 1)
        defer { sl_pop(L, 1) }
        if let label = Lua.string(L, -1) { return "\(name)#\(h.pointee.id) \"\(label)\"" }
        return "\(name)#\(h.pointee.id)"
    }

    func diagnose(_ line: String) {
        options.diagnostics(line)
    }

    // MARK: - Acquire and release

    /// Registers `r` in `scope` (default: the current scope) and pushes its handle.
    /// Stack: +1.
    func acquire(_ r: Resource, _ L: LuaState, in scope: Scope? = nil, labelIndex: Int32 = 0) {
        (scope ?? current).add(r)
        ledger.counts.acquired += 1
        if options.trace {
            diagnose("scopelua: trace: acquire \(describe(r)) in \((scope ?? current).path) at \(describe(r.site))")
        }
        pushHandle(r, L, labelIndex: labelIndex)
    }

    /// Registers a resource that has no handle of its own (a `defer`). Stack: 0.
    func register(_ r: Resource) {
        current.add(r)
    }

    /// Makes `child` owned by `owner` as well as by its scope: `owner` releases it first.
    func adopt(_ child: Resource, by owner: Resource) {
        child.owner = owner
        owner.children.append(child)
    }

    /// Releases `r` once: marks it released, takes it out of its scope and owner,
    /// releases its children (newest first), then runs its release handler.
    /// Returns the number of failures, each pushed on the stack as an error object.
    @discardableResult
    func release(_ r: Resource, _ L: LuaState, cause: ReleaseCause, error errIndex: Int32) -> Int32 {
        guard r.isOpen else { return 0 }
        r.releasedBy = cause
        if let h = r.handle {
            r.handle = nil
            h.pointee.record = nil
            switch cause {
            case .handle(let site):
                h.pointee.how = Int32(SL_BY_HANDLE)
                h.pointee.source = site.source
                h.pointee.line = site.line
            case .scopeEnd(let scope):
                h.pointee.how = Int32(SL_BY_SCOPE)
                h.pointee.detail = Int64(internPath(scope))
            case .parent(let owner):
                h.pointee.how = Int32(SL_BY_PARENT)
                h.pointee.source = Int32(owner.kind.index)
                h.pointee.detail = Int64(owner.id)
            case .closed:
                h.pointee.how = Int32(SL_BY_CLOSE)
                h.pointee.source = r.site.source
                h.pointee.line = r.site.line
            case .collected:
                h.pointee.how = Int32(SL_BY_GC)
            }
            r.finish(h)
        }
        r.scope?.remove(r)
        if let owner = r.owner {
            r.owner = nil
            if let i = owner.children.lastIndex(where: { $0 === r }) { owner.children.remove(at: i) }
        }
        var failures: Int32 = 0
        while let child = r.children.popLast() {
            failures += release(child, L, cause: .parent(r), error: errIndex)
        }
        switch cause {
        case .handle, .closed: ledger.counts.releasedByHandle += 1
        case .scopeEnd, .parent: ledger.counts.releasedByScope += 1
        case .collected: ledger.counts.leaked += 1
        }
        if options.trace {
            let how: String
            switch cause {
            case .handle(let site): how = "at \(describe(site))"
            case .closed: how = "by <close>"
            case .scopeEnd(let s): how = "by the end of \(s.path)"
            case .collected: how = "by the garbage collector"
            case .parent(let owner): how = "with \(describe(owner))"
            }
            diagnose("scopelua: trace: release \(describe(r)) \(how)")
        }
        _ = lua_checkstack(L, 8)
        if !r.close(self, L, error: errIndex) {
            ledger.counts.releaseErrors += 1
            failures += 1
        }
        return failures
    }

    /// Ends `scope`: releases everything still open in it, newest first, passing the
    /// error at `errIndex` (0: none) to each release handler. A failing release does not
    /// stop the others. Returns the number of failures pushed on the stack.
    func endScope(_ scope: Scope, _ L: LuaState, error errIndex: Int32) -> Int32 {
        var failures: Int32 = 0
        while let r = scope.popNewest() {
            failures += release(r, L, cause: .scopeEnd(scope), error: errIndex)
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

    /// The message for using the released handle at `idx`, positioned at the caller.
    func pushUseAfterRelease(_ h: UnsafeMutablePointer<sl_Handle>, _ L: LuaState, _ idx: Int32) {
        Lua.pushError(L, "\(describeHandle(h, L, idx)) used after release (\(describeRelease(h)))")
    }

    // MARK: - Handles

    /// Pushes a new userdata handle for `r`; its label is the Lua string at `labelIndex`
    /// when given (no copy), else `r.label`. Stack: +1.
    func pushHandle(_ r: Resource, _ L: LuaState, labelIndex: Int32 = 0) {
        let labelIndex = labelIndex == 0 ? 0 : lua_absindex(L, labelIndex)
        let h = lua_newuserdatauv(L, MemoryLayout<sl_Handle>.size, 1).unsafelyUnwrapped
            .bindMemory(to: sl_Handle.self, capacity: 1)
        h.initialize(to: sl_Handle(record: Unmanaged.passUnretained(r).toOpaque(), id: Int64(r.id),
                                   kind: Int32(r.kind.index), how: Int32(SL_OPEN), source: 0, line: 0,
                                   detail: 0, value: 0))
        r.handle = h
        if labelIndex != 0 {
            lua_pushvalue(L, labelIndex)
            lua_setiuservalue(L, -2, 1)
        } else if let label = r.label {
            Lua.push(L, label)
            lua_setiuservalue(L, -2, 1)
        }
        lua_rawgeti(L, Lua.registry, lua_Integer(metatableRefs[r.kind.index]))
        _ = lua_setmetatable(L, -2)
    }

    /// The memory of the handle at `idx` if it is one of the runtime's handles (of
    /// `kind`, when given), open or released. Stack: 0.
    @inline(__always)
    func handle(at idx: Int32, _ L: LuaState, kind: ResourceKind? = nil) -> UnsafeMutablePointer<sl_Handle>? {
        let h = metatablePointers.withUnsafeBufferPointer {
            sl_tohandle(L, idx, $0.baseAddress, Int32($0.count))
        }
        if let kind, let h, h.pointee.kind != Int32(kind.index) { return nil }
        return h
    }

    /// The open resource behind the handle at `idx`, if any. Stack: 0.
    func resource(at idx: Int32, _ L: LuaState, kind: ResourceKind? = nil) -> Resource? {
        guard let raw = handle(at: idx, L, kind: kind)?.pointee.record else { return nil }
        return Unmanaged<Resource>.fromOpaque(raw).takeUnretainedValue()
    }

    /// Pushes `{ id, kind, label, site, scope, age }` for an open resource. Stack: +1.
    func pushDescriptor(_ r: Resource, _ L: LuaState) {
        lua_createtable(L, 0, 6)
        lua_pushinteger(L, lua_Integer(r.id))
        Lua.setField(L, -2, "id")
        Lua.push(L, r.kind.name)
        Lua.setField(L, -2, "kind")
        if let label = r.label {
            Lua.push(L, label)
            Lua.setField(L, -2, "label")
        }
        Lua.push(L, describe(r.site))
        Lua.setField(L, -2, "site")
        Lua.push(L, r.scope?.path ?? "?")
        Lua.setField(L, -2, "scope")
        lua_pushnumber(L, Double(sl_monotonic_ns() &- r.acquiredAt) / 1e9)
        Lua.setField(L, -2, "age")
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
        if status != LUA_OK {
            let error = takeError(L)
            throw error
        }
    }

    /// Pops the error object on top and turns it into a `LuaError` with the traceback
    /// captured for it, if any.
    func takeError(_ L: LuaState) -> LuaError {
        let message = Lua.describe(L, -1)
        var traceback: String?
        Lua.getRegistryField(L, "scopelua.traceback.error")
        let same = lua_rawequal(L, -1, -2) != 0
            || (lua_type(L, -1) == LUA_TSTRING && lua_type(L, -2) == LUA_TSTRING
                && message.hasPrefix(Lua.describe(L, -1)))
        sl_pop(L, 1)
        if same {
            Lua.getRegistryField(L, "scopelua.traceback")
            traceback = Lua.string(L, -1)
            sl_pop(L, 1)
        }
        sl_pop(L, 1)
        return LuaError(kind: .runtime, message: message, traceback: traceback)
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
        for failure in releaseAll() {
            diagnose("scopelua: release error: \(failure)")
        }
        closed = true
        lua_close(L)
    }

    // MARK: - Reporting

    /// Resource counts so far.
    public var resourceCounts: ResourceCounts { ledger.counts }

    /// Timer statistics so far, in label order of first use.
    public var timers: [TimerSummary] { ledger.timers }

    /// Resources still open, oldest first, in the whole tree: (description, scope path, site).
    public var openResources: [(resource: String, scope: String, site: String)] {
        var all: [(String, String, String)] = []
        func walk(_ s: Scope) {
            for r in s.openResources where r.isHandle {
                all.append((describe(r), s.path, describe(r.site)))
            }
        }
        walk(root)
        if current !== root { walk(current) }
        return all
    }
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
