fn main() -> std::process::ExitCode {
    iam_authorized_keys::main()
}
