import Testing
@testable import ScopeLua
import CScopeLua

@Suite(.timeLimit(testTimeLimit)) struct JSONTests {
    @Test func emptyArraysAndNullRoundTrip() {
        let run = runLua("""
            local v = json.decode([[{"a":[],"b":{},"c":[1,[],{"k\\"q":[]}],"e":null,"s":"x[]y"}]])
            return json.encode(v.c) == [=[[1,[],{"k\\"q":[]}]]=] and json.encode(v.b) == "{}" and v.s == "x[]y",
              v.e == json.null, getmetatable(v.a) == json.array_mt,
              json.encode(json.decode("[]")), json.encode({}), json.encode(json.array()), json.encode({1, 2})
            """)
        #expect(run.values == [.boolean(true), .boolean(true), .boolean(true), .string("[]"), .string("{}"),
                               .string("[]"), .string("[1,2]")])
    }

    @Test func invalidJSONIsAnErrorAtTheCallersLine() {
        let run = runLua("\njson.decode('{\"a\":')")
        #expect(run.error?.message == "test:2: Expected value but found T_END at character 6")
    }

    /// The encoder writes cjson's text for everything cjson can encode: checked against
    /// cjson itself on a corpus (with a string of all 256 bytes) and on 100 000 random
    /// numbers of every magnitude.
    @Test func encodeWritesWhatCjsonWrites() {
        let run = runLua(#"""
            local cjson = require "cjson"
            local differ = {}
            local function check(v)
              local a, b = json.encode(v), cjson.encode(v)
              if a ~= b then differ[#differ+1] = a .. " vs " .. b end
            end
            for _, v in ipairs{
              {s = "a/b\127\1\"\\\n\t\r\b\f", u = "h\195\169llo"}, {n = -0.0, f = 0.1, big = 1e14, g = 123456789012345.0},
              {tiny = 1e-5, small = 0.0001, neg = -2.5, third = 1/3, huge = 1.5e300}, {1, 2, {a = true, b = false}, "x"},
              {}, "plain", 3, 2.5, -7.25, {[1] = "a", [2] = "b", [4] = "d"}, {x = {y = {z = {}}}}, {[1.5] = "k", [2] = 1},
              {json.null, 1}, {id = 17.0, ts = 1700000000.0, amount = 89.22},
            } do check(v) end
            local bytes = {}
            for c = 0, 255 do bytes[#bytes+1] = string.char(c) end
            check(table.concat(bytes))                                   -- every byte's escape
            math.randomseed(7)
            for i = 1, 100000 do
              local x = (math.random() - 0.5) * 10 ^ math.random(-8, 16)
              if i % 3 == 0 then x = math.floor(x * 100 + 0.5) / 100 end
              if i % 5 == 0 then x = math.floor(x) + 0.0 end
              check(x)
            end
            return #differ, differ[1]
            """#)
        #expect(run.error == nil)
        #expect(run.values.first == .integer(0))
    }

    /// Where the encoder differs from cjson on purpose: marked empty tables are `[]`
    /// and integers are exact.
    @Test func encodeWritesMarkedEmptyArraysAndExactIntegers() {
        let run = runLua("""
            return json.encode({list = json.array(), nested = {json.array({})}}) == '{"list":[],"nested":[[]]}'
                or json.encode({list = json.array(), nested = {json.array({})}}) == '{"nested":[[]],"list":[]}',
              json.encode(1 << 53), json.encode(math.maxinteger), json.encode(math.mininteger), json.encode(-12)
            """)
        #expect(run.values == [.boolean(true), .string("9007199254740992"),
                               .string("9223372036854775807"), .string("-9223372036854775808"), .string("-12")])
    }

    /// What cannot be encoded is an error with cjson's wording, at the caller's line.
    @Test func encodeErrorsNameTheValue() {
        let cases: [(String, String)] = [
            ("json.encode(print)", "test:1: Cannot serialise function: type not supported"),
            ("json.encode({[true] = 1})", "test:1: Cannot serialise boolean: table key must be a number or string"),
            ("json.encode({x = 0/0})", "test:1: Cannot serialise number: must not be NaN or Inf"),
            ("json.encode({[20] = 1})", "test:1: Cannot serialise table: excessively sparse array"),
            ("local t = {}; local c = t; for i = 1, 1001 do c.a = {}; c = c.a end; json.encode(t)",
             "test:1: Cannot serialise, excessive nesting (1001)"),
            ("json.encode()", "test:1: bad argument #1 to 'encode' (expected 1 argument)"),
        ]
        for (source, message) in cases {
            #expect(runLua(source).error?.message == message, "\(source)")
        }
    }

    /// The decoder accepts what cjson accepts and says what cjson says, value for value:
    /// checked against cjson on a corpus of valid and broken texts, big containers
    /// (members past the first 32 go in differently) and 20 000 random numbers.
    @Test func decodeReadsWhatCjsonReads() {
        let run = runLua(#"""
            local cjson = require "cjson"
            local function same(a, b)
              if type(a) ~= type(b) then return false end
              if type(a) == "table" then
                for k, v in pairs(a) do if not same(v, b[k]) then return false end end
                for k in pairs(b) do if a[k] == nil then return false end end
                return true
              end
              if type(a) == "number" then return a == b and (a ~= 0 or 1/a == 1/b) end
              return a == b
            end
            local inputs = {
              '{"id":0,"user":"u654","kind":"click","amount":2.5,"ts":1700000000,"tags":["a"]}',
              '[1,2,3]', '"x"', '3', '-0', '-0.0', '1.', '-.5', '1e5', '1E-3', '1.5e+10', '12345678901234567890',
              '1e400', '0.1', '123.456e-7', '{"a":{"b":{"c":[1,[2,[3]]]}}}', '  { "a" : 1 , "b" : [ true , false , null ] } ',
              '{"k\\"q":"\\u00e9\\ud83d\\ude00\\n\\t\\/\\\\"}', '"a\1b"', '{"a":1}\0junk',
              '{"a":', '{"a"}', '{a:1}', '[1,]', '[1 2]', '{"a":1,}', '', ' ', 'nul', 'tru', '-', '-a', '"abc', '"\\x"',
              '"\\u12"', '"\\ud83d"', '"\\ude00"', '"\\ud83d\\u0041"', '[1]x', '{"a":1} {"b":2}', '1.5.3', '1e', '1e+',
              string.rep("[", 1001) .. string.rep("]", 1001), string.rep("[", 999) .. string.rep("]", 999),
            }
            local members, items = {}, {}
            for i = 1, 100 do members[i] = '"k' .. i .. '":' .. i; items[i] = tostring(i * 1.5) end
            inputs[#inputs+1] = "{" .. table.concat(members, ",") .. "}"
            inputs[#inputs+1] = "[" .. table.concat(items, ",") .. "]"
            inputs[#inputs+1] = '{"a":1,"b":2,"a":3}'                                  -- the later key wins
            inputs[#inputs+1] = "{" .. table.concat(members, ",") .. ',"k1":"again","k99":[]}'
            math.randomseed(3)
            for i = 1, 20000 do inputs[#inputs+1] = string.format("%.17g", (math.random() - 0.5) * 10 ^ math.random(-300, 300)) end
            -- Broken events: an event line with a few characters inserted, deleted or
            -- replaced (leaving out the numbers cjson lets through and scopelua rejects).
            local event = '{"id":17,"user":"u654","kind":"click","amount":2.5,"ts":1700000000,"tags":["a"],"x":[]}'
            local alphabet = {'{', '}', '[', ']', ',', ':', '"', '\\', 'u', '0', '9', '-', '.', 'e', ' ', 't', 'n', '\0', '\200'}
            for i = 1, 20000 do
              local s = event
              for k = 1, math.random(1, 3) do
                local pos, c = math.random(1, #s + 1), alphabet[math.random(#alphabet)]
                local op = math.random(3)
                if op == 1 then s = s:sub(1, pos - 1) .. c .. s:sub(pos)
                elseif op == 2 then s = s:sub(1, pos - 1) .. s:sub(pos + 1)
                else s = s:sub(1, pos - 1) .. c .. s:sub(pos + 1) end
              end
              if not s:find("[^%d%.eE]%-?0%d") then inputs[#inputs+1] = s end
            end
            local differ = {}
            for _, s in ipairs(inputs) do
              local ok1, a = pcall(json.decode, s)
              local ok2, b = pcall(cjson.decode, s)
              if ok1 ~= ok2 or (ok1 and not same(a, b)) or (not ok1 and a ~= b) then differ[#differ+1] = s end
            end
            return #differ, differ[1]
            """#)
        #expect(run.error == nil)
        #expect(run.values.first == .integer(0))
    }

    /// Where the decoder differs from cjson 2.1 on purpose: integers stay integers, and
    /// numbers JSON does not allow (cjson lets them through by default) are errors.
    @Test func decodeKeepsIntegersAndRejectsWhatJSONDoesNotAllow() {
        let run = runLua("""
            local e = json.decode('{"id":17,"amount":2.50,"big":12345678901234567890}')
            local limits = json.decode(json.encode({math.maxinteger, math.mininteger}))
            return math.type(e.id), math.type(e.amount), math.type(e.big),
              limits[1] == math.maxinteger, limits[2] == math.mininteger, math.type(json.decode("9223372036854775808"))
            """)
        #expect(run.values == [.string("integer"), .string("float"), .string("float"),
                               .boolean(true), .boolean(true), .string("float")])
        let cases: [(String, String)] = [
            ("01", "Expected value but found invalid number at character 1"),
            ("-01", "Expected value but found invalid number at character 1"),
            ("0x10", "Expected value but found invalid number at character 1"),
            ("-inf", "Expected value but found invalid number at character 1"),
            ("+1", "Expected value but found invalid token at character 1"),
            ("NaN", "Expected value but found invalid token at character 1"),
            ("[1,inf]", "Expected value but found invalid token at character 4"),
        ]
        for (text, message) in cases {
            #expect(runLua("json.decode('\(text)')").error?.message == "test:1: \(message)", "\(text)")
        }
        #expect(runLua("json.decode('\\0x')").error?.message == "test:1: JSON parser does not support UTF-16 or UTF-32")
        #expect(runLua("json.decode(42)").error?.message == "test:1: bad argument #1 to 'decode' (string expected, got number)")
    }

    /// Issue 9, item 4: decoding is linear in the input. An 8 MiB line of 1.6 million
    /// short strings with escapes used to take minutes (a strlen of the rest of the line
    /// for every escaped string) against a fraction of a second for the same line
    /// without escapes; the time limit catches a quadratic decoder, no timing is asserted.
    /// Also one 8 MiB string of escapes, after which the scratch buffer it grew is
    /// shrunk back.
    @Test func decodingIsLinearInEscapedStrings() throws {
        let rt = Runtime()
        defer { rt.close() }
        let values = try rt.execute(#"""
            local n = 1600000
            local escaped = "[" .. string.rep('"\\n"', n, ",") .. "]"
            local plain = "[" .. string.rep('"nn"', n, ",") .. "]"
            local keys = "{" .. string.rep('"k\\t":1', n // 2, ",") .. "}"
            local a, b, c = json.decode(escaped), json.decode(plain), json.decode(keys)
            local one = json.decode('"' .. string.rep("\\n", 4 << 20) .. '"')
            return #escaped, #a, a[1] == "\n" and a[n] == "\n", #b, b[n], c["k\t"], #one, one == string.rep("\n", 4 << 20)
            """#)
        let expected: [LuaValue] = [.integer(8_000_001), .integer(1_600_000), .boolean(true), .integer(1_600_000),
                                    .string("nn"), .integer(1), .integer(4_194_304), .boolean(true)]
        #expect(values == expected)
        #expect(rt.info.pointee.jsoncap <= 1_048_576, "scratch buffer not shrunk: \(rt.info.pointee.jsoncap) bytes")
    }

    /// Encoding is linear too, and the encoder's reusable buffer, grown for one huge
    /// value, is shrunk back afterwards (it used to stay at 8 times the value's size).
    /// Small buffers stay between calls.
    @Test func encodeBufferShrinksAfterAHugeValue() throws {
        let rt = Runtime()
        defer { rt.close() }
        let values = try rt.execute(#"""
            local big = json.encode({string.rep("\n", 4 << 20)})
            local many = {}
            for i = 1, 1600000 do many[i] = "\n" end
            local list = json.encode(many)
            return #big, big:sub(1, 6), #list, json.decode(list)[1600000]
            """#)
        let expected: [LuaValue] = [.integer(8_388_612), .string(#"["\n\n"#), .integer(8_000_001), .string("\n")]
        #expect(values == expected)
        #expect(rt.info.pointee.jsoncap <= 1_048_576, "encode buffer not shrunk: \(rt.info.pointee.jsoncap) bytes")
        _ = try rt.execute(#"return json.encode({a = "b"})"#)
        let small = rt.info.pointee.jsoncap
        #expect(small > 0 && small <= 1_048_576)
    }

    @Test func requireableAsScopeJson() {
        #expect(runLua("return require('scope.json') == json").values == [.boolean(true)])
    }
}
