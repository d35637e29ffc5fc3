import CScopeLua
// TEMPORARY until the helpers' branches merge.
enum WorkerStop {
    static func attach(_ L: LuaState) {}
    static func detach(_ L: LuaState) {}
    static func partitionHash(_ path: String, _ bytes: UnsafeBufferPointer<UInt8>) -> UInt64? { nil }
}
