import CLua
import CScopeLua
import ScopeLuaCore

/// A handle to one of the run's shared dictionaries (`shared.dict(name)`). It refers to
/// the dictionary; it does not own its data: releasing it (or its scope ending) only
/// ends this handle, and the dictionary lives on in the store for every runtime of the
/// run (ARCHITECTURE.md, "Shared dictionaries"). Its label (`d.label`, kept after release
/// like any handle's) is the dictionary's name.
final class SharedDictResource: Resource {
    let dictionary: SharedDictionary

    init(dictionary: SharedDictionary) {
        self.dictionary = dictionary
        super.init(label: String(decoding: dictionary.name, as: UTF8.self))
    }

    /// Nothing to undo: the data stays in the store.
    override func close(_ runtime: Runtime, _ L: LuaState, _ handle: Handle, error errIndex: Int32) -> Bool { true }

    /// `shared dictionary "counters"`, for messages.
    var described: String { "shared dictionary \"\(label ?? "")\"" }
}
