import CLua
import CScopeLua
#if canImport(Glibc)
import Glibc
#endif

/// The `json` module: Debian's lua-cjson (the fast C codec of the Lua world) for the
/// work, plus round-tripping of empty arrays, which cjson 2.1 cannot tell from empty
/// objects: `[]` decodes to an empty table marked with `json.array_mt`, and such a
/// table encodes back as `[]`. The extra work happens only when the text contains `[]`
/// (decoding) or `{}` (encoding), so most events pay nothing for it.
enum JSONBindings {
    static let marker = "\u{0}scopelua.empty_array\u{0}"
    /// How cjson writes the marker.
    static let encodedMarker = Array("\"\\u0000scopelua.empty_array\\u0000\"".utf8)

    static func install(_ rt: Runtime, _ L: LuaState) {
        let base = lua_gettop(L)
        defer { lua_settop(L, base) }
        Bindings.getGlobal(L, "require")
        Lua.push(L, "cjson")
        guard sl_pcall(L, 1, 1, 0) == LUA_OK, lua_type(L, -1) == LUA_TTABLE,
              Lua.cfunction(L, -1, "decode") != nil, Lua.cfunction(L, -1, "encode") != nil else {
            rt.missingModules["json"] = "the json module needs Debian's lua-cjson (apt-get install lua-cjson): "
                + Lua.describe(L, -1)
            lua_settop(L, base)
            lua_createtable(L, 0, 2)
            Lua.setFunction(L, -1, "decode", missing)
            Lua.setFunction(L, -1, "encode", missing)
            Bindings.publishModule(L, "json")
            return
        }
        let cjson = lua_gettop(L)
        // cjson's functions are closures over their configuration: keep the values.
        Lua.rawField(L, cjson, "decode")
        let decode = luaL_ref(L, Lua.registry)
        Lua.rawField(L, cjson, "encode")
        rt.json = JSONCodec(decode: decode, encode: luaL_ref(L, Lua.registry))
        // Decoded objects that contain marked empty arrays carry this metatable, so
        // encoding them takes the marker path at once instead of encoding twice.
        lua_createtable(L, 0, 1)
        Lua.push(L, "json.object")
        Lua.setField(L, -2, "__name")
        rt.json?.markedRoots = luaL_ref(L, Lua.registry)
        lua_createtable(L, 0, 6)
        Lua.setFunction(L, -1, "decode", decodeFunction)
        Lua.setFunction(L, -1, "encode", encodeFunction)
        Lua.setFunction(L, -1, "array", array)
        Lua.rawField(L, cjson, "null")
        Lua.setField(L, -2, "null")
        lua_createtable(L, 0, 1)
        Lua.push(L, "json.array")
        Lua.setField(L, -2, "__name")
        lua_pushvalue(L, -1)
        rt.json?.arrayMetatable = luaL_ref(L, Lua.registry)
        Lua.setField(L, -2, "array_mt")
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

    static let encodeFunction: SwiftLuaFunction = { L in
        let (rt, L) = Runtime.from(L)
        guard let codec = rt.json else { return raise }
        lua_settop(L, 1)
        if codec.encode(L, 1) { return 1 }
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

/// cjson's C functions and the array marker, used by `json` and the pipeline runner.
struct JSONCodec {
    /// Registry references of cjson.decode and cjson.encode.
    let decodeFn: Int32
    let encodeFn: Int32
    var arrayMetatable: Int32 = LUA_NOREF
    /// Metatable of decoded values holding marked empty arrays.
    var markedRoots: Int32 = LUA_NOREF

    init(decode: Int32, encode: Int32) {
        decodeFn = decode
        encodeFn = encode
    }

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

    /// Encodes the value at `idx`; pushes the text (true) or cjson's message (false).
    func encode(_ L: LuaState, _ idx: Int32) -> Bool {
        let idx = lua_absindex(L, idx)
        if lua_type(L, idx) == LUA_TTABLE {
            if isMarkedEmpty(L, idx) {
                Lua.push(L, "[]")
                return true
            }
            var decodedWithMarks = false
            if lua_getmetatable(L, idx) != 0 {
                lua_rawgeti(L, Lua.registry, lua_Integer(markedRoots))
                decodedWithMarks = lua_rawequal(L, -1, -2) != 0
                sl_pop(L, 2)
            }
            if decodedWithMarks, let result = encodeMarked(L, idx) { return result }
        }
        lua_rawgeti(L, Lua.registry, lua_Integer(encodeFn))
        lua_pushvalue(L, idx)
        guard sl_pcall(L, 1, 1, 0) == LUA_OK else { return false }
        // A table built by the script may hold json.array() tables: look only if the
        // text has an empty object at all.
        guard lua_type(L, idx) == LUA_TTABLE, containsEmptyObject(L, -1) else { return true }
        let first = lua_gettop(L)
        guard let result = encodeMarked(L, idx) else { return true }
        sl_remove(L, first)
        return result
    }

    /// Encodes with the marked empty arrays replaced by a marker that becomes `[]` in the
    /// text. Nil (stack unchanged) when there are none; else pushes as `encode` does.
    private func encodeMarked(_ L: LuaState, _ idx: Int32) -> Bool? {
        lua_createtable(L, 3, 0)
        let list = lua_gettop(L)
        var found: lua_Integer = 0
        collectMarked(L, idx, list, &found, depth: 0)
        guard found > 0 else {
            sl_pop(L, 1)
            return nil
        }
        var i: lua_Integer = 1
        while i <= found {
            lua_rawgeti(L, list, i)
            lua_rawgeti(L, list, i + 1)
            Lua.push(L, JSONBindings.marker)
            lua_rawset(L, -3)
            sl_pop(L, 1)
            i += 3
        }
        lua_rawgeti(L, Lua.registry, lua_Integer(encodeFn))
        lua_pushvalue(L, idx)
        let status = sl_pcall(L, 1, 1, 0)
        i = 1
        while i <= found {
            lua_rawgeti(L, list, i)
            lua_rawgeti(L, list, i + 1)
            lua_rawgeti(L, list, i + 2)
            lua_rawset(L, -3)
            sl_pop(L, 1)
            i += 3
        }
        sl_remove(L, list)
        guard status == LUA_OK else { return false }
        var len = 0
        guard let p = lua_tolstring(L, -1, &len) else { return true }
        let text = UnsafeRawBufferPointer(start: p, count: len).bindMemory(to: UInt8.self)
        let m = JSONBindings.encodedMarker
        let out = UnsafeMutablePointer<UInt8>.allocate(capacity: len)
        defer { out.deallocate() }
        var n = 0
        var k = 0
        while k < len {
            if text[k] == m[0], k + m.count <= len, text[k..<(k + m.count)].elementsEqual(m) {
                out[n] = 91  // [
                out[n + 1] = 93  // ]
                n += 2
                k += m.count
            } else {
                out[n] = text[k]
                n += 1
                k += 1
            }
        }
        sl_pop(L, 1)
        _ = lua_pushlstring(L, UnsafeRawPointer(out).assumingMemoryBound(to: CChar.self), n)
        return true
    }

    /// Whether the string at `idx` contains `{}`.
    private func containsEmptyObject(_ L: LuaState, _ idx: Int32) -> Bool {
        var len = 0
        guard let p = lua_tolstring(L, idx, &len), len > 1 else { return false }
        let bytes = UnsafeRawBufferPointer(start: p, count: len)
        var i = 0
        while i < len - 1 {
            if bytes[i] == 123, bytes[i + 1] == 125 { return true }
            i += 1
        }
        return false
    }

    private func isMarkedEmpty(_ L: LuaState, _ idx: Int32) -> Bool {
        let idx = lua_absindex(L, idx)
        guard lua_getmetatable(L, idx) != 0 else { return false }
        lua_rawgeti(L, Lua.registry, lua_Integer(arrayMetatable))
        let marked = lua_rawequal(L, -1, -2) != 0
        sl_pop(L, 2)
        guard marked else { return false }
        lua_pushnil(L)
        if lua_next(L, idx) != 0 {
            sl_pop(L, 2)
            return false
        }
        return true
    }

    /// Appends (parent, key, table) to `list` for every empty table marked as an array
    /// inside the table at `table`.
    private func collectMarked(_ L: LuaState, _ table: Int32, _ list: Int32, _ found: inout lua_Integer, depth: Int) {
        guard depth < 64, lua_checkstack(L, 4) != 0 else { return }
        lua_pushnil(L)
        while lua_next(L, table) != 0 {
            if lua_type(L, -1) == LUA_TTABLE {
                let value = lua_gettop(L)
                if isMarkedEmpty(L, value) {
                    lua_pushvalue(L, table)
                    lua_rawseti(L, list, found + 1)
                    lua_pushvalue(L, value - 1)
                    lua_rawseti(L, list, found + 2)
                    lua_pushvalue(L, value)
                    lua_rawseti(L, list, found + 3)
                    found += 3
                } else {
                    collectMarked(L, value, list, &found, depth: depth + 1)
                }
            }
            sl_pop(L, 1)
        }
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
        var marked = false
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
                    marked = true
                } else {
                    sl_pop(L, 2)
                }
            }
            lua_settop(L, root)
        }
        if marked, lua_getmetatable(L, root) == 0 {
            lua_rawgeti(L, Lua.registry, lua_Integer(markedRoots))
            _ = lua_setmetatable(L, root)
        } else if marked {
            sl_pop(L, 1)
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
