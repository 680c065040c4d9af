//! Command-line interface: argument parsing and the commands' output. No mapping logic lives
//! here; commands call into the library.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};

use protolake::contract::{delta_schema, to_ddl};
use protolake::decode::{DecodeOptions, Decoder, Pool};

#[derive(Parser)]
#[command(
    name = "protolake",
    version,
    about = "Protobuf events → Delta Lake tables, decoded from the message descriptor at run time",
    long_about = None
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Inspect the table schema a protobuf message maps to.
    #[command(subcommand)]
    Schema(SchemaCommand),
    /// Decode sample ad-impression events (some invalid) and show what happens to each.
    Quickstart(QuickstartArgs),
}

#[derive(Subcommand)]
pub enum SchemaCommand {
    /// Print the Spark-style DDL of the columns the decoder produces for a message (the form
    /// pinned in schemas/<table>/vN.ddl), in Delta storage types.
    Print(SchemaPrintArgs),
}

/// Where the message descriptor comes from.
#[derive(Args, Debug, Clone)]
pub struct DescriptorArgs {
    /// Encoded FileDescriptorSet, as written by `buf build -o x.binpb` or
    /// `protoc --include_imports --descriptor_set_out=x.binpb`.
    #[arg(long, value_name = "FILE", conflicts_with = "proto", required_unless_present = "proto")]
    pub descriptor_set: Option<PathBuf>,
    /// .proto file(s) to compile instead of a descriptor set (proto2/proto3; for editions
    /// files use a descriptor set from buf or protoc).
    #[arg(long, value_name = "FILE")]
    pub proto: Vec<PathBuf>,
    /// Import path(s) for --proto (google/protobuf/* is built in).
    #[arg(short = 'I', long = "include", value_name = "DIR")]
    pub include: Vec<PathBuf>,
    /// Fully-qualified message name, e.g. protolake.examples.v1.AdImpression.
    #[arg(long, value_name = "NAME")]
    pub message: String,
    /// recursive.fields.max.depth: how many times a recursive message may appear on one path
    /// (1..=10). Without it a recursive message is refused.
    #[arg(long, value_name = "N")]
    pub recursion_depth: Option<u32>,
}

#[derive(Args)]
pub struct SchemaPrintArgs {
    #[command(flatten)]
    pub descriptor: DescriptorArgs,
    /// Print the decoder's Arrow schema (unsigned ints, durations) instead of the Delta DDL.
    #[arg(long)]
    pub arrow: bool,
}

#[derive(Args)]
pub struct QuickstartArgs {
    /// How many sample events to generate.
    #[arg(long, default_value_t = 1000)]
    pub events: usize,
}

impl DescriptorArgs {
    pub fn pool(&self) -> Result<Pool> {
        if let Some(path) = &self.descriptor_set {
            let bytes = std::fs::read(path).with_context(|| format!("cannot read descriptor set {}", path.display()))?;
            return Pool::decode(&bytes).with_context(|| format!("{} is not a usable descriptor set", path.display()));
        }
        compile_protos(&self.proto, &self.include)
    }

    pub fn decoder(&self) -> Result<Decoder> {
        let pool = self.pool()?;
        let options = DecodeOptions { recursion_depth: self.recursion_depth };
        Ok(Decoder::new(&pool, &self.message, &options)?)
    }
}

/// Compiles .proto files with protox (each file's directory is an import path too).
pub fn compile_protos(files: &[PathBuf], includes: &[PathBuf]) -> Result<Pool> {
    if files.is_empty() {
        bail!("give --descriptor-set FILE or at least one --proto FILE");
    }
    let mut dirs: Vec<PathBuf> = includes.to_vec();
    let mut names = Vec::new();
    for file in files {
        let dir = file.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf();
        let included = dirs.iter().find(|d| file.starts_with(d)).cloned();
        match included {
            Some(d) => names.push(file.strip_prefix(&d).unwrap_or(file).to_path_buf()),
            None => {
                names.push(PathBuf::from(file.file_name().unwrap_or_default()));
                dirs.push(dir);
            }
        }
    }
    let set = protox::compile(&names, &dirs).map_err(|e| anyhow::anyhow!("cannot compile the .proto files: {e}"))?;
    Ok(Pool::from_prost(&set)?)
}

pub fn schema_print(args: &SchemaPrintArgs) -> Result<()> {
    let decoder = args.descriptor.decoder()?;
    let schema = decoder.schema();
    if args.arrow {
        for f in schema.fields() {
            println!("{}: {}{}", f.name(), f.data_type(), if f.is_nullable() { "" } else { " not null" });
        }
    } else {
        print!("{}", to_ddl(&delta_schema(&schema))?);
    }
    Ok(())
}
