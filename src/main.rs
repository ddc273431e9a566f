fn main() {
    std::process::exit(ttv::cli::main());
}
