import CLua
import CScopeLua
import ScopeLuaCore

/// The `shared` module: `shared.dict(name)` → a handle (kind `"shared"`) to a dictionary
/// of the run's `SharedStore` (`RuntimeOptions.shared`), which every runtime of the run
/// (the workers of `--workers N`) shares. Each method converts its Lua arguments to
/// `SharedValue`s first, then does its whole work under the dictionary's lock, then
/// pushes the result: atomic per call, and no Lua call ever happens under the lock.
///
/// Keys (and names) are strings; numbers are accepted and converted as `tostring` does
/// (`42` is the key `"42"`, `2.0` the key `"2.0"`), like Lua's own `luaL_checkstring`.
/// Values are strings, numbers (integer or float, kept as they are) and booleans.
package enum SharedBindings: RuntimeModule {
    package static func install(_ rt: Runtime, _ L: LuaState) {
        HandleBindings.makeMetatable(rt, L, kind: .shared, methods: [
            ("get", get), ("set", set), ("incr", incr), ("add", add), ("delete", delete),
            ("keys", keys), ("count", count), ("close", HandleBindings.release),
        ])
        lua_createtable(L, 0, 1)
        Lua.setFunction(L, -1, "dict", dict)
        Bindings.publishModule(L, "shared")
    }

    /// shared.dict(name) → a handle owned by the current scope.
    static let dict: SwiftLuaFunction = { L in
        let (rt, L) = Runtime.from(L)
        guard let name = bytes(L, 1) else {
            Lua.pushTypeError(L, 1, "string")
            return raise
        }
        let dictionary = rt.options.shared.dictionary(named: name)
        // The name (converted to a string in place) is the label a released handle keeps.
        rt.acquire(.shared, SharedDictResource(dictionary: dictionary), L, site: rt.currentSite(L), labelIndex: 1)
        return 1
    }

    /// d:get(key) → the value, or nil.
    static let get: SwiftLuaFunction = { L in
        let (rt, L) = Runtime.from(L)
        guard let d = dictionary(rt, L), let key = key(L) else { return raise }
        push(L, d.dictionary[key])
        return 1
    }

    /// d:set(key, value): stores the value; nil deletes the key. No results.
    static let set: SwiftLuaFunction = { L in
        let (rt, L) = Runtime.from(L)
        guard let d = dictionary(rt, L), let key = key(L) else { return raise }
        if sl_isnoneornil(L, 3) != 0 {
            d.dictionary.set(key, nil)
            return 0
        }
        guard let value = value(L, 3, d, allowed: "a string, a number or a boolean, or nil to delete the key") else { return raise }
        d.dictionary.set(key, value)
        return 0
    }

    /// d:add(key, value) → true if the key was absent and now holds the value, false
    /// (nothing changed) if it was present.
    static let add: SwiftLuaFunction = { L in
        let (rt, L) = Runtime.from(L)
        guard let d = dictionary(rt, L), let key = key(L),
              let value = value(L, 3, d, allowed: "a string, a number or a boolean") else { return raise }
        lua_pushboolean(L, d.dictionary.add(key, value) ? 1 : 0)
        return 1
    }

    /// d:delete(key) → whether the key was present.
    static let delete: SwiftLuaFunction = { L in
        let (rt, L) = Runtime.from(L)
        guard let d = dictionary(rt, L), let key = key(L) else { return raise }
        lua_pushboolean(L, d.dictionary.delete(key) ? 1 : 0)
        return 1
    }

    /// d:incr(key [, by = 1 [, init = 0]]) → the new value. An absent key starts at
    /// `init`; integer + integer stays an integer and an overflow is an error, anything
    /// with a float is a float; a key holding a string or boolean is an error.
    static let incr: SwiftLuaFunction = { L in
        let (rt, L) = Runtime.from(L)
        guard let d = dictionary(rt, L), let key = key(L),
              let by = number(L, 3, default: 1), let initial = number(L, 4, default: 0) else { return raise }
        switch d.dictionary.increment(key, by: by, initial: initial) {
        case .value(let sum):
            push(L, sum)
            return 1
        case .notANumber(let held):
            Lua.pushError(L, "\(d.described): cannot incr key \"\(display(key))\": it holds a \(held.typeName), not a number (set a number there first, or count under another key)")
            return raise
        case .overflow(let a, let b):
            Lua.pushError(L, "\(d.described): incr of key \"\(display(key))\" overflows: \(a) + \(b) does not fit in an integer (increment by a float, e.g. 1.0, to go on in floats)")
            return raise
        }
    }

    /// d:keys() → a list of the keys, sorted by their bytes (a snapshot).
    static let keys: SwiftLuaFunction = { L in
        let (rt, L) = Runtime.from(L)
        guard let d = dictionary(rt, L) else { return raise }
        let keys = d.dictionary.keys
        lua_createtable(L, Int32(clamping: keys.count), 0)
        for (i, key) in keys.enumerated() {
            push(L, key)
            lua_rawseti(L, -2, lua_Integer(i) + 1)
        }
        return 1
    }

    /// d:count() → the number of keys.
    static let count: SwiftLuaFunction = { L in
        let (rt, L) = Runtime.from(L)
        guard let d = dictionary(rt, L) else { return raise }
        lua_pushinteger(L, lua_Integer(d.dictionary.count))
        return 1
    }

    // MARK: - Conversions

    /// The open shared handle at index 1, or an error pushed ("used after release", or a
    /// type error).
    static func dictionary(_ rt: Runtime, _ L: LuaState) -> SharedDictResource? {
        guard let h = HandleBindings.checkOpen(rt, L, 1, kind: .shared) else { return nil }
        guard let d = h.pointee.resource as? SharedDictResource else {
            Lua.pushTypeError(L, 1, ResourceKind.shared.name)
            return nil
        }
        return d
    }

    /// The bytes of the string at `idx`; a number there is first converted in place as
    /// `tostring` would (as `luaL_checkstring` does). Nil for any other type. Stack: 0.
    static func bytes(_ L: LuaState, _ idx: Int32) -> [UInt8]? {
        let type = lua_type(L, idx)
        guard type == LUA_TSTRING || type == LUA_TNUMBER else { return nil }
        var len = 0
        guard let p = lua_tolstring(L, idx, &len) else { return nil }
        return Array(UnsafeRawBufferPointer(start: p, count: len))
    }

    /// The key at index 2, or a type error pushed.
    static func key(_ L: LuaState) -> [UInt8]? {
        guard let key = bytes(L, 2) else {
            Lua.pushTypeError(L, 2, "string")
            return nil
        }
        return key
    }

    /// The value at `idx` as stored, or an error pushed that names its type and what may
    /// be stored (`allowed`).
    static func value(_ L: LuaState, _ idx: Int32, _ d: SharedDictResource, allowed: String) -> SharedValue? {
        switch lua_type(L, idx) {
        case LUA_TBOOLEAN: return .boolean(lua_toboolean(L, idx) != 0)
        case LUA_TNUMBER:
            return lua_isinteger(L, idx) != 0 ? .integer(lua_tointegerx(L, idx, nil)) : .float(lua_tonumberx(L, idx, nil))
        case LUA_TSTRING: return bytes(L, idx).map { .string($0) }
        case LUA_TNIL, LUA_TNONE:
            Lua.pushArgError(L, idx, "cannot store nil in \(d.described): use \(allowed)")
            return nil
        default:
            Lua.pushArgError(L, idx, "cannot store a \(Lua.typeName(L, idx)) in \(d.described): use \(allowed)")
            return nil
        }
    }

    /// The number at `idx` (integer or float as it is), `fallback` when absent or nil, or
    /// a type error pushed (no string coercion: a dictionary's numbers are numbers).
    static func number(_ L: LuaState, _ idx: Int32, default fallback: Int64) -> SharedValue? {
        switch lua_type(L, idx) {
        case LUA_TNONE, LUA_TNIL: return .integer(fallback)
        case LUA_TNUMBER:
            return lua_isinteger(L, idx) != 0 ? .integer(lua_tointegerx(L, idx, nil)) : .float(lua_tonumberx(L, idx, nil))
        default:
            Lua.pushTypeError(L, idx, "number")
            return nil
        }
    }

    /// Pushes a stored value as the Lua value it was (nil when absent). Stack: +1.
    static func push(_ L: LuaState, _ value: SharedValue?) {
        switch value {
        case nil: lua_pushnil(L)
        case .integer(let i): lua_pushinteger(L, i)
        case .float(let f): lua_pushnumber(L, f)
        case .string(let s): push(L, s)
        case .boolean(let b): lua_pushboolean(L, b ? 1 : 0)
        }
    }

    /// Pushes bytes as a Lua string. Stack: +1.
    static func push(_ L: LuaState, _ bytes: [UInt8]) {
        bytes.withUnsafeBufferPointer { buf in
            _ = lua_pushlstring(L, buf.baseAddress.map { UnsafeRawPointer($0).assumingMemoryBound(to: CChar.self) }, buf.count)
        }
    }

    /// A key as messages show it.
    static func display(_ key: [UInt8]) -> String {
        String(decoding: key, as: UTF8.self)
    }
}
