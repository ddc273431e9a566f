//! The command line (DESIGN.md §9).

pub fn main() -> i32 {
    0
}
