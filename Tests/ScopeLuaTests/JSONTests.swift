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

    @Test func requireableAsScopeJson() {
        #expect(runLua("return require('scope.json') == json").values == [.boolean(true)])
    }
}
