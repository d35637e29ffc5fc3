/// What `scopelua --version` says: scopelua's own version and the versions of the
/// libraries it runs with.
public enum ScopeluaVersion {
    /// scopelua's version: the one place it is written.
    public static let number = "0.4.0"

    /// The shared libraries the binary links, as loaded at run time (the Debian packages
    /// installed, not the headers of the build machine): `Lua 5.4.4, SQLite 3.40.1,
    /// hiredis 0.14.1` (hiredis has no run-time version call: see `HiredisLibrary`).
    public static var libraries: String {
        "Lua \(Lua.libraryRelease), SQLite \(SQLiteLibrary.version), hiredis \(HiredisLibrary.version)"
    }

    /// `scopelua 0.4.0 (Lua 5.4.4, SQLite 3.40.1, hiredis 0.14.1)`.
    public static var description: String { "scopelua \(number) (\(libraries))" }
}
