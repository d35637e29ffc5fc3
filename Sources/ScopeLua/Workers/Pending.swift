import CScopeLua
// TEMPORARY until the helpers' branches merge.
enum WorkerStop {
    static func attach(_ L: LuaState) { _ = sl_stop_attach(L) }
    static func detach(_ L: LuaState) { sl_stop_detach(L) }
    static func partitionHash(_ path: String, _ bytes: UnsafeBufferPointer<UInt8>) -> UInt64? { nil }
}
