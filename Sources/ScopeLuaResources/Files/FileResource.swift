import CLua
import CScopeLua
import ScopeLuaCore

/// A file opened with `fs.open`: a stock io file the runtime holds (through a registry
/// reference, so the collector cannot close it behind the runtime's back) and closes
/// exactly once. Data written is on disk once the handle is released.
final class FileResource: Resource {
    /// Registry reference to the inner io file.
    private(set) var inner: Int32

    init(path: String, inner: Int32) {
        self.inner = inner
        super.init(label: path)
    }

    /// Pushes the inner io file. Stack: +1.
    func pushInner(_ L: LuaState) {
        lua_rawgeti(L, Lua.registry, lua_Integer(inner))
    }

    override func close(_ runtime: Runtime, _ L: LuaState, _ handle: Handle, error errIndex: Int32) -> Bool {
        Lua.reserve(L, 4, for: "closing a file")
        pushInner(L)
        let failedEarlier = FileResource.failedEarlier(L, -1)
        let errno = sl_closeiofile(L, -1)
        luaL_unref(L, Lua.registry, inner)
        inner = LUA_NOREF
        return FileResource.closed(runtime, L, handle, errno: errno, failedEarlier: failedEarlier)
    }

    /// Whether a write or flush of the open io file at `idx` already failed. stdio keeps
    /// only a flag: fclose then succeeds (the failed data is gone) and, unchecked, the
    /// loss would go unreported. Stack: 0.
    static func failedEarlier(_ L: LuaState, _ idx: Int32) -> Bool {
        guard let f = sl_iofile(L, idx) else { return false }
        return ferror(f) != 0
    }

    /// The result of closing the io file on top (popped): true, or false with the
    /// failure pushed (fclose's reason, or the earlier failure). `errno` is
    /// sl_closeiofile's (its reason is on top when nonzero).
    static func closed(_ runtime: Runtime, _ L: LuaState, _ handle: Handle, errno: Int32, failedEarlier: Bool) -> Bool {
        var reason: String?
        if errno != 0 {
            reason = Lua.describe(L, -1)
            sl_pop(L, 1)
        } else if failedEarlier {
            reason = "an earlier write or flush failed (what it held was not written)"
        }
        sl_pop(L, 1)
        guard let reason else { return true }
        Lua.push(L, "release of \(runtime.describe(handle)) failed: \(reason)")
        return false
    }
}

/// A file from the stock `io.open`, adopted by the scope that was current: closed when
/// that scope ends if the script has not closed it. The runtime holds it weakly, so io's
/// own behaviour, collection included, is unchanged.
final class AdoptedFile: Resource {
    /// The runtime's id for it (its hidden handle's), the key in the weak table.
    var id: Int64 = 0
    /// Registry reference that keeps the hidden handle alive while registered.
    var anchor: Int32 = LUA_NOREF
    /// Its hidden handle, while open (nil once released: the memory may be gone).
    var handle: Handle?

    /// Pushes the io file if the script still has it. Stack: +1 or 0.
    func pushFile(_ runtime: Runtime, _ L: LuaState) -> Bool {
        lua_rawgeti(L, Lua.registry, lua_Integer(runtime.adopted.tableRef))
        let found = lua_rawgeti(L, -1, lua_Integer(id)) != LUA_TNIL
        sl_remove(L, -2)
        if !found { sl_pop(L, 1) }
        return found
    }

    /// Whether the script still has the file and it is open. Stack: 0.
    func stillOpen(_ runtime: Runtime, _ L: LuaState) -> Bool {
        guard pushFile(runtime, L) else { return false }
        defer { sl_pop(L, 1) }
        return sl_iofile(L, -1) != nil
    }

    override func close(_ runtime: Runtime, _ L: LuaState, _ handle: Handle, error errIndex: Int32) -> Bool {
        Lua.reserve(L, 4, for: "closing an io file")
        self.handle = nil
        luaL_unref(L, Lua.registry, anchor)
        guard pushFile(runtime, L) else { return true }
        lua_rawgeti(L, Lua.registry, lua_Integer(runtime.adopted.tableRef))
        lua_pushnil(L)
        lua_rawseti(L, -2, lua_Integer(id))
        sl_pop(L, 1)
        let failedEarlier = FileResource.failedEarlier(L, -1)
        let errno = sl_closeiofile(L, -1)
        return FileResource.closed(runtime, L, handle, errno: errno, failedEarlier: failedEarlier)
    }
}

/// The adopted io files still believed open, and the weak table (id → io file) that
/// finds them. Files the script closes itself are noticed lazily: when the list has
/// doubled since the last sweep, closed or collected files are dropped (released "by
/// handle"), so a loop of io.open/close stays O(1) amortized.
/// The files module's state on a runtime (see `RuntimeModule`).
final class AdoptedFiles {
    var tableRef: Int32 = LUA_NOREF
    var live: [AdoptedFile] = []
    var threshold = 64
}

extension Runtime {
    /// The adopted io files (the files module's state).
    var adopted: AdoptedFiles { state(AdoptedFiles.self) { AdoptedFiles() } }

    /// Registers the io file on top of the stack with the current scope. Stack: 0.
    func adoptIOFile(path: String, _ L: LuaState) {
        let adopted = self.adopted
        let f = AdoptedFile(label: path)
        let h = acquire(.ioFile, f, L, site: currentSite(L))
        f.anchor = luaL_ref(L, Lua.registry)
        f.id = h.pointee.id
        f.handle = h
        lua_rawgeti(L, Lua.registry, lua_Integer(adopted.tableRef))
        lua_pushvalue(L, -2)
        lua_rawseti(L, -2, lua_Integer(f.id))
        sl_pop(L, 1)
        adopted.live.append(f)
        if adopted.live.count >= adopted.threshold { sweepAdoptedFiles() }
    }

    /// Drops the adopted files that are no longer open: closed by the script (released
    /// "by handle"), or reclaimed by the collector while open, which is a leak like any
    /// other (io's own finalizer closed the file; the runtime warns and counts it).
    /// Also run when the runtime closes, so no leak goes unreported. Stack: 0.
    func sweepAdoptedFiles() {
        let adopted = self.adopted
        // Sweep outside any access to `adopted`: releasing can run Lua code.
        let list = adopted.live
        adopted.live = []
        var kept: [AdoptedFile] = []
        for f in list {
            guard let h = f.handle else { continue }  // released meanwhile
            if f.stillOpen(self, L) {
                kept.append(f)
            } else if f.pushFile(self, L) {
                sl_pop(L, 1)
                release(h, L, cause: .handle(.unknown), error: 0)
            } else {
                noteLeak(h)
                release(h, L, cause: .collected, error: 0)
            }
        }
        adopted.live += kept
        adopted.threshold = max(64, adopted.live.count * 2)
    }
}
