import CLua
import CScopeLua
import ScopeLuaCore

/// The `fs` module, runtime-owned files, and adoption of stock `io.open` files.
package enum FileBindings: RuntimeModule {
    package static func install(_ rt: Runtime, _ L: LuaState) {
        HandleBindings.makeHiddenMetatable(rt, L, kind: .ioFile)
        // io's own C functions, taken before any script can replace them.
        Bindings.getGlobal(L, "io")
        let io = lua_gettop(L)
        guard let ioOpen = Lua.cfunction(L, io, "open") else {
            fatalError("the stock io library has no C function io.open")
        }
        Lua.getRegistryField(L, "FILE*")  // LUA_FILEHANDLE
        Lua.rawField(L, -1, "__index")
        let ioMethods = lua_gettop(L)
        let method = { (name: String) -> lua_CFunction in
            guard let fn = Lua.cfunction(L, ioMethods, name) else {
                fatalError("the stock io library has no file method \(name)")
            }
            return fn
        }

        HandleBindings.makeMetatable(rt, L, kind: .file, methods: [("close", closeFile)]) { L in
            for name in ["read", "seek", "flush", "setvbuf"] {
                sl_pushiodelegate(L, method(name), unwrap)
                Lua.setField(L, -2, name)
            }
            sl_pushfilewrite(L, unwrap)
            Lua.setField(L, -2, "write")
            sl_pushfilelines(L, method("lines"), unwrap, checkTop)
            Lua.setField(L, -2, "lines")
        }
        rt.kindNames[ResourceKind.ioFile.index] = ResourceKind.ioFile.name
        lua_createtable(L, 0, 0)
        lua_createtable(L, 0, 1)
        Lua.push(L, "v")
        Lua.setField(L, -2, "__mode")
        _ = lua_setmetatable(L, -2)
        rt.adopted.tableRef = luaL_ref(L, Lua.registry)

        // fs module.
        lua_createtable(L, 0, 1)
        sl_pushopendelegate(L, ioOpen, wrap)
        Lua.setField(L, -2, "open")
        Bindings.publishModule(L, "fs")

        // io.open: same function, plus adoption by the current scope.
        sl_pushopendelegate(L, ioOpen, adopt)
        Lua.setField(L, io, "open")
        lua_settop(L, io - 1)
    }

    /// The last sweep: adopted files the script closed, or leaked, are counted now.
    package static func willClose(_ rt: Runtime) {
        rt.sweepAdoptedFiles()
    }

    /// After io's open succeeded: stack [path, mode?, iofile] → [.., handle].
    static let wrap: SwiftLuaFunction = { L in
        let (rt, L) = Runtime.from(L)
        let path = Lua.describe(L, 1, metamethods: false)
        let site = rt.currentSite(L)
        let inner = luaL_ref(L, Lua.registry)
        rt.acquire(.file, FileResource(path: path, inner: inner), L, site: site, labelIndex: 1)
        return 1
    }

    /// After the stock io.open succeeded: register the file with the current scope and
    /// hand back the very same io file.
    static let adopt: SwiftLuaFunction = { L in
        let (rt, L) = Runtime.from(L)
        rt.adoptIOFile(path: Lua.describe(L, 1, metamethods: false), L)
        return 1
    }

    /// Replaces the file handle at index 1 by its inner io file, or fails with the
    /// runtime's message (wrong type, used after release).
    static let unwrap: SwiftLuaFunction = { L in
        let (rt, L) = Runtime.from(L)
        guard let h = HandleBindings.checkOpen(rt, L, 1, kind: .file) else { return raise }
        guard let r = h.pointee.resource as? FileResource else { return raise }
        r.pushInner(L)
        sl_replace(L, 1)
        return 0
    }

    /// The handle on top must still be open (each step of `lines`).
    static let checkTop: SwiftLuaFunction = { L in
        let (rt, L) = Runtime.from(L)
        guard HandleBindings.checkOpen(rt, L, lua_gettop(L), kind: .file) != nil else { return raise }
        return 0
    }

    /// f:close() — io's spelling of f:release(); true, or false if already released.
    static let closeFile: SwiftLuaFunction = { L in
        HandleBindings.release(L)
    }
}
