import CLua
import CScopeLua
#if canImport(Glibc)
import Glibc
#endif

/// The `json` module. Decoding is Debian's lua-cjson (the fast C codec of the Lua world)
/// plus round-tripping of empty arrays, which cjson 2.1 cannot tell from empty objects:
/// `[]` decodes to an empty table marked with `json.array_mt`; the extra work happens
/// only when the text contains `[]`. Encoding is scopelua's (`sl_json_encode`, in C):
/// cjson's text, written faster, with marked empty tables as `[]`.
enum JSONBindings {
    static func install(_ rt: Runtime, _ L: LuaState) {
        let base = lua_gettop(L)
        defer { lua_settop(L, base) }
        lua_createtable(L, 0, 6)
        let module = lua_gettop(L)
        sl_pushjsonencode(L)
        Lua.setField(L, module, "encode")
        Lua.setFunction(L, module, "array", array)
        lua_pushlightuserdata(L, nil)  // cjson.null: the NULL light userdata
        Lua.setField(L, module, "null")
        lua_createtable(L, 0, 1)
        Lua.push(L, "json.array")
        Lua.setField(L, -2, "__name")
        rt.info.pointee.jsonarraymt = lua_topointer(L, -1)
        lua_pushvalue(L, -1)
        let arrayMetatable = luaL_ref(L, Lua.registry)
        Lua.setField(L, module, "array_mt")

        Bindings.getGlobal(L, "require")
        Lua.push(L, "cjson")
        guard sl_pcall(L, 1, 1, 0) == LUA_OK, lua_type(L, -1) == LUA_TTABLE,
              Lua.cfunction(L, -1, "decode") != nil else {
            rt.missingModules["json"] = "json.decode needs Debian's lua-cjson (apt-get install lua-cjson): "
                + Lua.describe(L, -1)
            sl_pop(L, 1)
            Lua.setFunction(L, module, "decode", missing)
            lua_pushvalue(L, module)
            Bindings.publishModule(L, "json")
            return
        }
        // cjson's functions are closures over their configuration: keep the value.
        Lua.rawField(L, -1, "decode")
        rt.json = JSONCodec(decodeFn: luaL_ref(L, Lua.registry), arrayMetatable: arrayMetatable)
        sl_pop(L, 1)
        Lua.setFunction(L, module, "decode", decodeFunction)
        lua_pushvalue(L, module)
        Bindings.publishModule(L, "json")
    }

    static let missing: SwiftLuaFunction = { L in
        let (rt, L) = Runtime.from(L)
        Lua.pushError(L, rt.missingModules["json"] ?? "json is not available")
        return raise
    }

    static let decodeFunction: SwiftLuaFunction = { L in
        let (rt, L) = Runtime.from(L)
        guard lua_type(L, 1) == LUA_TSTRING else {
            Lua.pushTypeError(L, 1, "string")
            return raise
        }
        guard let codec = rt.json else { return raise }
        if codec.decode(L, 1) { return 1 }
        let message = Lua.describe(L, -1)
        Lua.pushError(L, message)
        return raise
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
        lua_rawgeti(L, Lua.registry, lua_Integer(rt.json?.arrayMetatable ?? LUA_NOREF))
        _ = lua_setmetatable(L, 1)
        return 1
    }
}

/// JSON for the runtime (the pipeline runner, the REPL): cjson's decode with empty
/// arrays marked, and scopelua's encoder.
struct JSONCodec {
    /// Registry reference of cjson.decode.
    let decodeFn: Int32
    /// Registry reference of json.array_mt.
    let arrayMetatable: Int32

    /// Decodes the string at `idx`; pushes the value (true) or cjson's message (false).
    func decode(_ L: LuaState, _ idx: Int32) -> Bool {
        let idx = lua_absindex(L, idx)
        lua_rawgeti(L, Lua.registry, lua_Integer(decodeFn))
        lua_pushvalue(L, idx)
        guard sl_pcall(L, 1, 1, 0) == LUA_OK else { return false }
        if lua_type(L, -1) == LUA_TTABLE {
            var len = 0
            if let p = lua_tolstring(L, idx, &len) {
                markEmptyArrays(L, UnsafeRawBufferPointer(start: p, count: len).bindMemory(to: UInt8.self))
            }
        }
        return true
    }

    /// Encodes the value at `idx`; pushes the text (true) or the reason (false).
    func encode(_ L: LuaState, _ idx: Int32) -> Bool {
        sl_json_encode(L, idx) != 0
    }

    /// Marks the tables that were `[]` in `text` (the decoded value is on top).
    private func markEmptyArrays(_ L: LuaState, _ text: UnsafeBufferPointer<UInt8>) {
        guard hasEmptyArray(text) else { return }
        let root = lua_gettop(L)
        if let first = text.first(where: { !($0 == 32 || $0 == 9 || $0 == 10 || $0 == 13) }), first == 91 {
            lua_pushnil(L)
            if lua_next(L, root) == 0 {
                lua_rawgeti(L, Lua.registry, lua_Integer(arrayMetatable))
                _ = lua_setmetatable(L, root)
                return
            }
            lua_settop(L, root)
        }
        var paths: [[PathStep]] = []
        scanEmptyArrays(text, &paths)
        for path in paths {
            lua_pushvalue(L, root)
            var ok = true
            for step in path {
                switch step {
                case .index(let i):
                    lua_rawgeti(L, -1, lua_Integer(i))
                case .key(let range, let escaped):
                    pushKey(L, text, range, escaped)
                    lua_rawget(L, -2)
                }
                sl_remove(L, -2)
                if lua_type(L, -1) != LUA_TTABLE {
                    ok = false
                    break
                }
            }
            if ok {
                lua_pushnil(L)
                if lua_next(L, -2) == 0 {
                    lua_rawgeti(L, Lua.registry, lua_Integer(arrayMetatable))
                    _ = lua_setmetatable(L, -2)
                } else {
                    sl_pop(L, 2)
                }
            }
            lua_settop(L, root)
        }
    }

    private func pushKey(_ L: LuaState, _ text: UnsafeBufferPointer<UInt8>, _ range: Range<Int>, _ escaped: Bool) {
        let base = UnsafeRawPointer(text.baseAddress.unsafelyUnwrapped + range.lowerBound).assumingMemoryBound(to: CChar.self)
        if !escaped {
            _ = lua_pushlstring(L, base, range.count)
            return
        }
        // A key with escapes: let cjson decode the quoted key.
        lua_rawgeti(L, Lua.registry, lua_Integer(decodeFn))
        _ = lua_pushlstring(L, base - 1, range.count + 2)
        if sl_pcall(L, 1, 1, 0) != LUA_OK {
            sl_pop(L, 1)
            lua_pushnil(L)
        }
    }

    /// Whether the text has a `[` followed (after blanks) by `]`: memchr finds the
    /// brackets, so lines without any cost next to nothing.
    private func hasEmptyArray(_ text: UnsafeBufferPointer<UInt8>) -> Bool {
        guard let base = text.baseAddress else { return false }
        let end = base + text.count
        var p = base
        while p < end, let found = memchr(p, 91, end - p) {
            var j = UnsafePointer<UInt8>(found.assumingMemoryBound(to: UInt8.self)) + 1
            while j < end, j.pointee == 32 || j.pointee == 9 || j.pointee == 10 || j.pointee == 13 { j += 1 }
            if j < end, j.pointee == 93 { return true }
            p = j
        }
        return false
    }

    enum PathStep {
        case index(Int)
        case key(Range<Int>, escaped: Bool)
    }

    /// Records the path (keys and 1-based indices) of every empty array in the text.
    private func scanEmptyArrays(_ text: UnsafeBufferPointer<UInt8>, _ paths: inout [[PathStep]]) {
        struct Frame { var object: Bool; var expectKey: Bool; var index: Int; var step: PathStep? }
        var stack: [Frame] = []
        var lastKey: PathStep?
        var i = 0
        let n = text.count
        func isSpace(_ c: UInt8) -> Bool { c == 32 || c == 9 || c == 10 || c == 13 }
        while i < n {
            let c = text[i]
            switch c {
            case 34:  // string
                var j = i + 1
                var escaped = false
                while j < n, text[j] != 34 {
                    if text[j] == 92 { escaped = true; j += 1 }
                    j += 1
                }
                if let top = stack.last, top.object, top.expectKey {
                    lastKey = .key((i + 1)..<min(j, n), escaped: escaped)
                    stack[stack.count - 1].expectKey = false
                }
                i = j + 1
            case 123, 91:  // { [
                var step: PathStep?
                if let top = stack.last { step = top.object ? lastKey : .index(top.index) }
                var k = i + 1
                while k < n, isSpace(text[k]) { k += 1 }
                if k < n, text[k] == (c == 123 ? 125 : 93) {
                    if c == 91 {
                        var path = stack.dropFirst().compactMap(\.step)
                        if let step { path.append(step) }
                        if !stack.isEmpty { paths.append(path) }
                    }
                    i = k + 1
                } else {
                    stack.append(Frame(object: c == 123, expectKey: c == 123, index: 1, step: step))
                    i += 1
                }
            case 125, 93:
                _ = stack.popLast()
                i += 1
            case 44:  // ,
                if !stack.isEmpty {
                    if stack[stack.count - 1].object { stack[stack.count - 1].expectKey = true } else { stack[stack.count - 1].index += 1 }
                }
                i += 1
            default:
                i += 1
            }
        }
    }
}
