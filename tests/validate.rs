//! buf.validate rules carried by the descriptor: a record that breaks any rule becomes a dead
//! letter listing every violation, and its neighbours become rows.
#![cfg(feature = "protovalidate")]

use std::path::Path;

use prost::Message;
use protolake::decode::{DecodeOptions, Decoder, Pool};
use protolake::pipeline::TablePipeline;
use protolake::source::Coordinates;
use protolake::validate::validator_for;

/// validate.proto, served from the copy the validation crate carries.
struct ValidateProto;

impl protox::file::FileResolver for ValidateProto {
    fn open_file(&self, name: &str) -> Result<protox::file::File, protox::Error> {
        match prost_protovalidate::types::DESCRIPTOR_POOL.get_file_by_name(name) {
            Some(f) if name == "buf/validate/validate.proto" => {
                Ok(protox::file::File::from_file_descriptor_proto(f.file_descriptor_proto().clone()))
            }
            _ => Err(protox::Error::file_not_found(name)),
        }
    }
}

fn pool() -> Pool {
    let mut resolver = protox::file::ChainFileResolver::new();
    resolver.add(protox::file::IncludeFileResolver::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/protos")));
    resolver.add(ValidateProto);
    resolver.add(protox::file::GoogleFileResolver::new());
    let mut compiler = protox::Compiler::with_file_resolver(resolver);
    compiler.include_imports(true);
    compiler.open_file("validated.proto").unwrap();
    // The encoded set keeps option extensions (prost-types structs would drop them).
    Pool::decode(&compiler.encode_file_descriptor_set()).unwrap()
}

#[derive(Clone, PartialEq, Message)]
struct Line {
    #[prost(string, tag = "1")]
    sku: String,
}

#[derive(Clone, PartialEq, Message)]
struct Order {
    #[prost(string, tag = "1")]
    id: String,
    #[prost(int32, tag = "2")]
    quantity: i32,
    #[prost(message, optional, tag = "3")]
    line: Option<Line>,
}

#[test]
fn records_breaking_rules_become_dead_letters_listing_every_violation() {
    let pool = pool();
    let validator = validator_for(&pool, "pl.val.Order").unwrap().expect("rules found");
    let decoder = Decoder::new(&pool, "pl.val.Order", &DecodeOptions::default()).unwrap();
    let mut pipeline = TablePipeline::new(decoder, None, None, 1 << 20).unwrap().with_validator(Some(validator));
    let good = Order { id: "o-1".into(), quantity: 2, line: Some(Line { sku: "SKU-1".into() }) };
    let bad = Order { id: "x".into(), quantity: 0, line: Some(Line { sku: "ABC".into() }) };
    for (i, o) in [&good, &bad, &good].iter().enumerate() {
        pipeline.push(&o.encode_to_vec(), &Coordinates::File { path: "f".into(), index: i as u64 });
    }
    let (batch, dead) = pipeline.take(0).unwrap();
    assert_eq!(batch.unwrap().num_rows(), 2);
    assert_eq!(dead.len(), 1);
    let letter = &dead[0];
    eprintln!("dead letter: {}", letter.message);
    assert_eq!(letter.reason, "validation_failed");
    assert_eq!(letter.field_path, "id");
    for expected in ["id: ", "quantity: ", "line.sku: "] {
        assert!(letter.message.contains(expected), "{expected} missing in {}", letter.message);
    }
    assert_eq!(letter.raw, bad.encode_to_vec());
    // A message without rules gets no validator, and costs nothing.
    assert!(validator_for(&pool, "pl.val.Plain").unwrap().is_none());
}
