import CLua
import CScopeLua
import ScopeLuaCore

/// The `json` module: scopelua's own codec, in C (`jsondecode.c`, `jsonencode.c`). It
/// reads and writes what Debian's lua-cjson does, with cjson's messages (the tests
/// compare the two), measured faster on the pipeline's events (see the README), and
/// with what cjson 2.1 lacks: empty arrays round-trip (`[]` decodes to an empty table
/// marked with `json.array_mt`, which encodes back as `[]`), integers stay integers,
/// and numbers JSON does not allow (NaN, hex, leading zeros) are errors.
package enum JSONBindings: RuntimeModule {
    package static func install(_ rt: Runtime, _ L: LuaState) {
        let base = lua_gettop(L)
        defer { lua_settop(L, base) }
        lua_createtable(L, 0, 6)
        let module = lua_gettop(L)
        sl_pushjsondecode(L)
        Lua.setField(L, module, "decode")
        sl_pushjsonencode(L)
        Lua.setField(L, module, "encode")
        Lua.setFunction(L, module, "array", array)
        lua_pushlightuserdata(L, nil)  // the same null as cjson's: the NULL light userdata
        Lua.setField(L, module, "null")
        // json.array_mt, kept in the registry under its own address: the C codec finds
        // it there (decoding) and knows it by that address (encoding).
        lua_createtable(L, 0, 1)
        Lua.push(L, "json.array")
        Lua.setField(L, -2, "__name")
        let arrayMetatable = lua_topointer(L, -1)
        rt.info.pointee.jsonarraymt = arrayMetatable
        lua_pushvalue(L, -1)
        lua_rawsetp(L, Lua.registry, arrayMetatable)
        Lua.setField(L, module, "array_mt")
        Bindings.publishModule(L, "json")
    }

    /// json.array([t]) → t marked as an array (so that it encodes as `[]` when empty).
    static let array: SwiftLuaFunction = { L in
        let (rt, L) = Runtime.from(L)
        if lua_type(L, 1) != LUA_TTABLE {
            guard sl_isnoneornil(L, 1) != 0 else {
                Lua.pushTypeError(L, 1, "table")
                return raise
            }
            lua_settop(L, 0)
            lua_createtable(L, 0, 0)
        }
        lua_settop(L, 1)
        _ = lua_rawgetp(L, Lua.registry, rt.info.pointee.jsonarraymt)
        _ = lua_setmetatable(L, 1)
        return 1
    }
}

/// JSON for the runtime itself (the pipeline runner, the REPL).
package struct JSONCodec {
    package init() {}

    /// Decodes the string at `idx`; pushes the value (true) or the reason (false).
    package func decode(_ L: LuaState, _ idx: Int32) -> Bool {
        var len = 0
        guard let p = lua_tolstring(L, idx, &len) else {
            Lua.push(L, "not a string")
            return false
        }
        return sl_json_decode(L, p, len) != 0
    }

    /// Encodes the value at `idx`; pushes the text (true) or the reason (false).
    package func encode(_ L: LuaState, _ idx: Int32) -> Bool {
        sl_json_encode(L, idx) != 0
    }
}

extension Runtime {
    /// JSON for the runtime itself (the codec keeps no state).
    package var json: JSONCodec { JSONCodec() }
}
