import CLua
import CScopeLua
#if canImport(Glibc)
import Glibc
#endif

/// What Lua sees: globals, modules and metatables, installed into a fresh state: the
/// core's own bindings, then the runtime's modules (`RuntimeModule`) in order.
package enum Bindings {
    static func install(_ rt: Runtime, modules: [any RuntimeModule.Type]) {
        let L = rt.L
        HandleBindings.makeHiddenMetatable(rt, L, kind: .defer)
        ScopeBindings.install(rt, L)
        LogBindings.install(rt, L)
        for module in modules { module.install(rt, L) }
        installPackagePath(rt, L)
        PermissionBindings.install(rt, L)
    }

    /// `_G[name] = value on top` without metamethods. Stack: -1.
    package static func setGlobal(_ L: LuaState, _ name: String) {
        lua_rawgeti(L, Lua.registry, lua_Integer(LUA_RIDX_GLOBALS))
        lua_rotate(L, -2, 1)
        Lua.setField(L, -2, name)
        sl_pop(L, 1)
    }

    /// Pushes `_G[name]` without metamethods. Stack: +1.
    @discardableResult
    package static func getGlobal(_ L: LuaState, _ name: String) -> Int32 {
        lua_rawgeti(L, Lua.registry, lua_Integer(LUA_RIDX_GLOBALS))
        let t = Lua.rawField(L, -1, name)
        sl_remove(L, -2)
        return t
    }

    /// Publishes the module table on top as global `name` and as `require "scope.<name>"`
    /// (a preload entry returning the same table). Stack: -1.
    package static func publishModule(_ L: LuaState, _ name: String) {
        Bindings.getGlobal(L, "package")
        Lua.rawField(L, -1, "preload")
        lua_pushvalue(L, -3)
        sl_pushconstant(L)
        Lua.setField(L, -2, "scope.\(name)")
        sl_pop(L, 2)
        setGlobal(L, name)
    }

    /// Puts the shipped Lua modules (`stdlib/`) first on `package.path`.
    private static func installPackagePath(_ rt: Runtime, _ L: LuaState) {
        guard let dir = stdlibDirectory(rt.options.stdlibPath) else { return }
        getGlobal(L, "package")
        let current = Lua.rawField(L, -1, "path") == LUA_TSTRING ? Lua.string(L, -1) ?? "" : ""
        sl_pop(L, 1)
        Lua.push(L, "\(dir)/?.lua;\(dir)/?/init.lua;" + current)
        Lua.setField(L, -2, "path")
        sl_pop(L, 1)
    }

    /// Where the shipped Lua modules are: `SCOPELUA_STDLIB`, else the explicit option,
    /// else the directory found next to the running executable (`StdlibLocation`).
    static func stdlibDirectory(_ explicit: String?) -> String? {
        StdlibLocation.directory(environment: getenv("SCOPELUA_STDLIB").map { String(cString: $0) },
                                 explicit: explicit)
    }
}
