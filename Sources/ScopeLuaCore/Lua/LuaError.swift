/// A Lua error seen from Swift: the message (the error object as `tostring` shows it)
/// and, when one was taken, the traceback from where it was raised.
public struct LuaError: Error, CustomStringConvertible, Equatable {
    public enum Kind: Sendable, Equatable {
        /// The chunk did not compile; `incomplete` when it ended early (REPL continuation).
        case syntax(incomplete: Bool)
        /// An error raised while running Lua code (or a release failure).
        case runtime
    }

    public let kind: Kind
    public let message: String
    public let traceback: String?

    public init(kind: Kind, message: String, traceback: String? = nil) {
        self.kind = kind
        self.message = message
        self.traceback = traceback
    }

    public var description: String {
        traceback.map { "\(message)\n\($0)" } ?? message
    }
}
