import CScopeLua

/// A pipeline's `partition_by` (docs/ARCHITECTURE.md, "Partition keys"): a path of
/// object keys, `"user"` or `"user.id"`, and what it finds in a raw input line. With
/// `--workers N` the dispatcher sends every event whose key hashes alike to one worker,
/// in input order, choosing from the line's bytes alone (`jsonkey.c`): the worker
/// decodes the event once, in its own Lua state.
///
/// The key of a line is the hash of the value at the path in canonical form: a string
/// by its unescaped bytes, a number by its value (an integral float as that integer, so
/// `1`, `1.0` and `1e0` are one key, as they are for Lua's `==`), `true`, `false` and
/// `null` by type, an object or array by its text as written. The same key has the same
/// hash in every run.
package struct PartitionKey: Sendable, Equatable {
    /// What a line holds at the path.
    package enum Outcome: Equatable, Sendable {
        /// The value's hash.
        case key(UInt64)
        /// A valid object without the path: a key is absent, or the path goes through a
        /// value that is not an object (the dispatcher sends these to a fixed worker).
        case missing
        /// Not valid JSON, or not an object: what `json.decode` rejects (the worker
        /// that gets it rejects it as the runner does).
        case invalid
    }

    /// Why a `partition_by` string is not a path.
    package struct InvalidPath: Error, Equatable, CustomStringConvertible {
        package let message: String
        package var description: String { message }
    }

    /// The path as written.
    package let path: String
    /// The components' UTF-8 bytes one after another, and where each ends (`sl_KeyPath`).
    private let names: [UInt8]
    private let ends: [Int]

    /// Parses a dotted path: names joined by single dots, none empty. A name is matched
    /// against keys byte for byte once their escapes are read (`"\u0075ser"` is `user`);
    /// a key holding a dot cannot be named.
    package init(path: String) throws(InvalidPath) {
        let quoted = "partition_by \"\(path)\""
        guard !path.isEmpty else {
            throw InvalidPath(message: "partition_by is empty: it names a field (\"user\") or a path through nested objects (\"user.id\")")
        }
        guard path.first != "." else { throw InvalidPath(message: "\(quoted) starts with a dot") }
        guard path.last != "." else { throw InvalidPath(message: "\(quoted) ends with a dot") }
        var names: [UInt8] = []
        var ends: [Int] = []
        for byte in path.utf8 {
            if byte == UInt8(ascii: ".") {
                guard ends.last != names.count else { throw InvalidPath(message: "\(quoted) has an empty name between two dots") }
                ends.append(names.count)
            } else {
                names.append(byte)
            }
        }
        ends.append(names.count)
        self.path = path
        self.names = names
        self.ends = ends
    }

    /// Finds the value at the path in `line` (one JSON object, without its newline) in
    /// one pass over its bytes, without decoding it or allocating.
    package func locate(_ line: UnsafeBufferPointer<UInt8>) -> Outcome {
        guard let bytes = line.baseAddress, !line.isEmpty else { return .invalid }
        var hash: UInt64 = 0
        let outcome = names.withUnsafeBufferPointer { names in
            ends.withUnsafeBufferPointer { ends in
                var keyPath = sl_KeyPath(names: names.baseAddress, ends: ends.baseAddress, count: ends.count)
                return sl_jsonkey(bytes, line.count, &keyPath, &hash)
            }
        }
        switch outcome {
        case SL_KEY_FOUND: return .key(hash)
        case SL_KEY_MISSING: return .missing
        default: return .invalid
        }
    }
}
