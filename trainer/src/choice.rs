//! Choices: a setting whose value is one of a fixed set of names. The enum declared with
//! [`choice_enum!`] is the one declaration of a choice: the names the parameter table lists, the
//! parser and the canonical name all come from its variants, so a value cannot be listed without a
//! variant, and a variant that some `match` does not handle does not compile.

/// A choice enum's names and parser (implemented by [`choice_enum!`]).
pub trait Choice: Sized + Copy + PartialEq + std::fmt::Debug + 'static {
    /// Every accepted name, lower case: each variant's canonical name followed by its aliases.
    const NAMES: &'static [&'static str];
    /// Every variant, in declaration order.
    const ALL: &'static [Self];
    /// The variant named `text` (trimmed, any case).
    fn parse(text: &str) -> Option<Self>;
    /// The canonical name.
    fn name(self) -> &'static str;
}

/// Declares a choice enum: `Variant = "canonical" | "alias"…` per variant. Doc comments and
/// attributes (`#[default]` with a `#[derive(Default)]`) pass through.
macro_rules! choice_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $canon:literal $(| $alias:literal)* ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        $vis enum $name {
            $( $(#[$vmeta])* $variant ),+
        }

        impl $name {
            /// Every accepted name (canonical names and aliases), for the parameter table.
            pub const NAMES: &'static [&'static str] = &[$( $canon $(, $alias)* ),+];

            /// The canonical name.
            pub fn name(self) -> &'static str {
                match self {
                    $( $name::$variant => $canon ),+
                }
            }

            /// The variant named `text` (trimmed, any case).
            pub fn parse(text: &str) -> Option<Self> {
                let t = text.trim().to_ascii_lowercase();
                $( if t == $canon $(|| t == $alias)* { return Some($name::$variant); } )+
                None
            }
        }

        impl $crate::choice::Choice for $name {
            const NAMES: &'static [&'static str] = $name::NAMES;
            const ALL: &'static [Self] = &[$( $name::$variant ),+];
            fn parse(text: &str) -> Option<Self> {
                $name::parse(text)
            }
            fn name(self) -> &'static str {
                $name::name(self)
            }
        }

        impl ::serde::Serialize for $name {
            fn serialize<S: ::serde::Serializer>(&self, s: S) -> ::std::result::Result<S::Ok, S::Error> {
                s.serialize_str(self.name())
            }
        }
    };
}
pub(crate) use choice_enum;
