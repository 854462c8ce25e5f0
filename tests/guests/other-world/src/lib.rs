//! A component for some other world: it must be refused as a policy.

wit_bindgen::generate!({
    inline: "
        package example:greeter@1.0.0;
        world greeter {
            export hello: func() -> string;
        }
    ",
});

struct Greeter;

impl Guest for Greeter {
    fn hello() -> String {
        "hello".into()
    }
}

export!(Greeter);
