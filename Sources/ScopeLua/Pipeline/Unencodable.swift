import CLua
import CScopeLua

/// What makes a value impossible to write as JSON, found after the codec refused it
/// (the codec says what, not where): `field 'items[2].price': number is infinite`.
/// Only failures pay for this walk; the success path is the codec alone.
///
/// It follows `jsonencode.c`'s rules: numbers must be finite, values nil, booleans,
/// numbers, strings, tables or `json.null`; table keys strings or finite numbers; an
/// array (every key a positive integer) not excessively sparse; nesting at most
/// 1000 tables (a table containing itself is reported as such).
enum Unencodable {
    static let maxDepth = 1000

    /// The first problem in the table (or value) at `idx`, or nil if none is found
    /// (the codec failed for another reason, such as memory). Stack: 0.
    static func problem(_ L: LuaState, _ idx: Int32) -> String? {
        var walker = Walker(L: L)
        let top = lua_gettop(L)
        defer { lua_settop(L, top) }
        return walker.check(lua_absindex(L, idx), depth: 0)
    }

    /// Pushes a copy of the value at `idx` that the codec can write: each value it
    /// cannot is replaced by a string saying what it was (`"inf"`, `"nan"`,
    /// `"<function>"`, `"<cycle>"`, ...), bad keys by their string form, a too sparse
    /// array by an object. For dead letters, whose event must reach the file whatever
    /// it holds. Stack: +1.
    static func pushEncodable(_ L: LuaState, _ idx: Int32, arrayMetatable: UnsafeRawPointer?) {
        var walker = Walker(L: L)
        walker.arrayMetatable = arrayMetatable
        walker.copy(lua_absindex(L, idx), depth: 0)
    }

    private struct Walker {
        let L: LuaState
        /// Tables on the current path (a table met again contains itself).
        var path: [UnsafeRawPointer?] = []
        /// Field names on the current path.
        var names: [String] = []
        /// json.array_mt: the one metatable a copy keeps (an empty array stays `[]`).
        var arrayMetatable: UnsafeRawPointer?

        var fieldName: String {
            var text = ""
            for (i, n) in names.enumerated() {
                if i > 12, i < names.count - 3 {
                    if i == 13 { text += "..." }
                    continue
                }
                text += n.hasPrefix("[") || text.isEmpty ? n : "." + n
            }
            return text
        }

        func located(_ reason: String) -> String {
            names.isEmpty ? reason : "field '\(fieldName)': \(reason)"
        }

        /// The component naming the key at `idx` in a path.
        func component(_ idx: Int32) -> String {
            if lua_type(L, idx) == LUA_TNUMBER {
                return "[\(Lua.describe(L, idx))]"
            }
            return Lua.describe(L, idx, metamethods: false)
        }

        static func numberProblem(_ L: LuaState, _ idx: Int32) -> String? {
            guard lua_isinteger(L, idx) == 0 else { return nil }
            let d = lua_tonumberx(L, idx, nil)
            if d.isNaN { return "number is NaN" }
            if d.isInfinite { return "number is infinite" }
            return nil
        }

        /// cjson's array test (jsonencode.c `arraylength`): 1 array, 0 object, -1 too sparse.
        func arrayKind(_ t: Int32) -> Int {
            var items: Int64 = 0
            var max: Int64 = 0
            lua_pushnil(L)
            while lua_next(L, t) != 0 {
                if lua_type(L, -2) == LUA_TNUMBER {
                    let k = lua_tonumberx(L, -2, nil)
                    if k >= 1, k.rounded(.down) == k, k < 9.2e18 {
                        max = Swift.max(max, Int64(k))
                        items += 1
                        sl_pop(L, 1)
                        continue
                    }
                }
                sl_pop(L, 2)
                return 0
            }
            return max > items * 2 && max > 10 ? -1 : 1
        }

        mutating func check(_ idx: Int32, depth: Int) -> String? {
            switch lua_type(L, idx) {
            case LUA_TNIL, LUA_TBOOLEAN, LUA_TSTRING:
                return nil
            case LUA_TNUMBER:
                return Self.numberProblem(L, idx).map(located)
            case LUA_TLIGHTUSERDATA where lua_touserdata(L, idx) == nil:
                return nil  // json.null
            case LUA_TTABLE:
                break
            default:
                return located("\(Lua.typeName(L, idx)) values cannot be encoded")
            }
            let pointer = lua_topointer(L, idx)
            if path.contains(pointer) { return located("the table contains itself") }
            if depth + 1 > maxDepth { return located("nested deeper than \(maxDepth) tables") }
            guard lua_checkstack(L, 4) != 0 else { return located("nested too deep") }
            if arrayKind(idx) < 0 { return located("excessively sparse array") }
            path.append(pointer)
            defer { path.removeLast() }
            lua_pushnil(L)
            while lua_next(L, idx) != 0 {
                let key = lua_gettop(L) - 1
                switch lua_type(L, key) {
                case LUA_TSTRING:
                    break
                case LUA_TNUMBER:
                    if let p = Self.numberProblem(L, key) {
                        let shown = Lua.describe(L, key)
                        sl_pop(L, 2)
                        return located("key \(shown): \(p)")
                    }
                default:
                    let type = Lua.typeName(L, key)
                    sl_pop(L, 2)
                    return located("a key is a \(type) (keys must be strings or numbers)")
                }
                names.append(component(key))
                let found = check(key + 1, depth: depth + 1)
                names.removeLast()
                if let found {
                    sl_pop(L, 2)
                    return found
                }
                sl_pop(L, 1)
            }
            return nil
        }

        /// Pushes the encodable copy of the value at `idx`.
        mutating func copy(_ idx: Int32, depth: Int) {
            switch lua_type(L, idx) {
            case LUA_TNIL, LUA_TBOOLEAN, LUA_TSTRING:
                lua_pushvalue(L, idx)
                return
            case LUA_TNUMBER:
                if lua_isinteger(L, idx) == 0 {
                    let d = lua_tonumberx(L, idx, nil)
                    if d.isNaN { Lua.push(L, "nan"); return }
                    if d.isInfinite { Lua.push(L, d < 0 ? "-inf" : "inf"); return }
                }
                lua_pushvalue(L, idx)
                return
            case LUA_TLIGHTUSERDATA where lua_touserdata(L, idx) == nil:
                lua_pushvalue(L, idx)
                return
            case LUA_TTABLE:
                break
            default:
                Lua.push(L, "<\(Lua.typeName(L, idx))>")
                return
            }
            let pointer = lua_topointer(L, idx)
            if path.contains(pointer) { Lua.push(L, "<cycle>"); return }
            guard depth + 1 <= maxDepth, lua_checkstack(L, 6) != 0 else { Lua.push(L, "<nested too deep>"); return }
            let sparse = arrayKind(idx) < 0
            path.append(pointer)
            defer { path.removeLast() }
            lua_createtable(L, 0, 0)
            let result = lua_gettop(L)
            if lua_getmetatable(L, idx) != 0 {
                if arrayMetatable != nil, lua_topointer(L, -1) == arrayMetatable {
                    _ = lua_setmetatable(L, result)
                } else {
                    sl_pop(L, 1)
                }
            }
            lua_pushnil(L)
            while lua_next(L, idx) != 0 {
                let key = lua_gettop(L) - 1
                // The key: kept when the codec takes it, else its string form.
                let keyType = lua_type(L, key)
                if keyType == LUA_TSTRING || keyType == LUA_TNUMBER && Self.numberProblem(L, key) == nil && !sparse {
                    lua_pushvalue(L, key)
                } else {
                    Lua.push(L, Lua.describe(L, key, metamethods: false))
                }
                copy(key + 1, depth: depth + 1)
                lua_rawset(L, result)
                sl_pop(L, 1)
            }
        }
    }
}
