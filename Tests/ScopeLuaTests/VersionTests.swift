import Testing
@testable import ScopeLua

/// `scopelua --version`: scopelua's version and the libraries' as loaded at run time.
@Suite(.timeLimit(testTimeLimit)) struct VersionTests {
    @Test func theLuaReleaseIsReadFromTheLibrarysIdent() {
        #expect(Lua.release(fromIdent: "$LuaVersion: Lua 5.4.4  Copyright (C) 1994-2022 Lua.org, PUC-Rio $$LuaAuthors: R. Ierusalimschy $") == "5.4.4")
        #expect(Lua.release(fromIdent: "$LuaVersion: Lua 5.4.6  Copyright") == "5.4.6")
        #expect(Lua.release(fromIdent: "$LuaVersion: Lua 5.4.") == nil)
        #expect(Lua.release(fromIdent: "$LuaVersion: LuaJIT 2.1") == nil)
        #expect(Lua.release(fromIdent: "") == nil)
        // The library this process loaded (Debian bookworm: 5.4.4).
        #expect(Lua.libraryRelease.hasPrefix("5.4."))
    }

    @Test func theSQLiteVersionIsTheOneSQLReports() {
        let run = runLua("""
            local db <close> = sql.open(":memory:")
            return db:first("SELECT sqlite_version() AS v").v
            """)
        #expect(run.error == nil)
        #expect(run.text == SQLiteLibrary.version)
    }

    @Test func theDescriptionNamesEveryLinkedLibrary() {
        let text = ScopeluaVersion.description
        #expect(text == "scopelua \(ScopeluaVersion.number) (Lua \(Lua.libraryRelease), SQLite \(SQLiteLibrary.version), hiredis \(HiredisLibrary.version))")
        #expect(HiredisLibrary.version.hasPrefix("0.14."))
    }
}
