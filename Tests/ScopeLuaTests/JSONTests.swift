import Testing
@testable import ScopeLua

@Suite struct JSONTests {
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
    /// cjson itself on a corpus and on 100 000 random numbers of every magnitude.
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
            return json.encode({list = json.array(), nested = {json.array({})}}),
              json.encode(1 << 53), json.encode(math.maxinteger), json.encode(math.mininteger), json.encode(-12)
            """)
        #expect(run.values == [.string("{\"list\":[],\"nested\":[[]]}"), .string("9007199254740992"),
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

    @Test func requireableAsScopeJson() {
        #expect(runLua("return require('scope.json') == json").values == [.boolean(true)])
    }
}
