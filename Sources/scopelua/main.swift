import ScopeLua
let rt = Runtime()
do {
    try rt.execute(CommandLine.arguments.count > 1 ? CommandLine.arguments[1] : "print('hello')")
} catch {
    print(error)
}
rt.close()
