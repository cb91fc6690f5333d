//! Commands on scenes without models: `info`, `tiles`, `doctor`, `bench-read`.

use std::path::PathBuf;

use anyhow::{bail, Result};

use super::args::{BenchReadArgs, DoctorArgs, InfoArgs, TilesArgs};
use super::flag_error;
use super::print::print_json;
use crate::jobs::{self, BenchReadJob, TilesJob};
use crate::options::KeyStyle;
use crate::output::formats;
use crate::raster::{OpenOptions, Scene};

pub(super) fn info(a: InfoArgs) -> Result<i32> {
    let scene = Scene::open(
        &a.scene,
        &OpenOptions {
            pixel_coords: a.pixel_coords,
        },
    )?;
    let i = scene.info();
    if a.json {
        print_json(i)?;
        return Ok(0);
    }
    out!("{}", i.path)?;
    out!("  driver:      {}", i.driver)?;
    out!(
        "  size:        {} x {} pixels, {} bands",
        i.width,
        i.height,
        i.bands.len()
    )?;
    match &i.crs {
        Some(c) => out!(
            "  crs:         {}{}",
            c.name.as_deref().unwrap_or("unnamed"),
            c.epsg.map(|e| format!(" (EPSG:{e})")).unwrap_or_default()
        )?,
        None => out!("  crs:         none (pixel coordinates)")?,
    }
    let g = i.geotransform.0;
    out!(
        "  geotransform: [{}, {}, {}, {}, {}, {}]",
        g[0],
        g[1],
        g[2],
        g[3],
        g[4],
        g[5]
    )?;
    if !i.geotransform.is_north_up() {
        out!("               (rotated or sheared)")?;
    }
    out!(
        "  resolution:  {} x {} (CRS units)",
        i.resolution.0,
        i.resolution.1
    )?;
    if let Some((x, y)) = i.resolution_m {
        out!("               {x:.4} x {y:.4} m")?;
    }
    let b = i.footprint.bounds;
    out!("  bounds:      ({}, {}) - ({}, {})", b.0, b.1, b.2, b.3)?;
    if let Some(ll) = &i.footprint.lonlat {
        let (lons, lats): (Vec<f64>, Vec<f64>) = ll[..4].iter().copied().unzip();
        let fold = |v: &[f64], f: fn(f64, f64) -> f64, init| v.iter().copied().fold(init, f);
        out!(
            "  lon/lat:     ({:.6}, {:.6}) - ({:.6}, {:.6})",
            fold(&lons, f64::min, f64::INFINITY),
            fold(&lats, f64::min, f64::INFINITY),
            fold(&lons, f64::max, f64::NEG_INFINITY),
            fold(&lats, f64::max, f64::NEG_INFINITY)
        )?;
    }
    for band in &i.bands {
        let nodata = band
            .nodata
            .map(|n| format!(", nodata {n}"))
            .unwrap_or_default();
        let ovr = if band.overviews.is_empty() {
            String::new()
        } else {
            let sizes: Vec<String> = band
                .overviews
                .iter()
                .map(|(w, h)| format!("{w}x{h}"))
                .collect();
            format!(", overviews {}", sizes.join(" "))
        };
        out!(
            "  band {}:      {} {}, mask {}{}, block {}x{}{}{}",
            band.index,
            band.dtype,
            band.color,
            band.mask,
            nodata,
            band.block_size.0,
            band.block_size.1,
            ovr,
            if band.description.is_empty() {
                String::new()
            } else {
                format!(", \"{}\"", band.description)
            }
        )?;
    }
    Ok(0)
}

pub(super) fn tiles(a: TilesArgs, quiet: bool) -> Result<i32> {
    let out = match &a.out {
        Some(path) => {
            let format = formats::for_output(path, a.output.format.as_deref())?;
            crate::output::refuse_input(path, &a.scene)?;
            Some((path.clone(), format))
        }
        None => {
            if a.output.format.is_some() {
                bail!("--format needs --out");
            }
            None
        }
    };
    if a.output.report_flags.value().is_some() {
        bail!("--report is for model commands: `tiles` writes no report");
    }
    for (given, key) in [
        (a.input.scale.is_some(), "scale"),
        (a.tiling.batch_size.is_some(), "batch_size"),
    ] {
        if given {
            bail!(
                "{} is for model commands: `tiles` does not scale or batch tiles",
                KeyStyle::Flag.spell(key)
            );
        }
    }
    if let Some(chips) = &a.chips {
        crate::output::refuse_input(chips, &a.scene)?;
    }
    let job = TilesJob {
        scene: a.scene.clone(),
        open: a.input.open(),
        grid: a.tiling.grid().map_err(flag_error)?,
        read: a.tiling.read(&a.input, 1, None),
        out,
        chips: a.chips.clone(),
        overwrite: a.overwrite,
        progress: super::progress(quiet),
    };
    let report = jobs::run_tiles(job)?;
    if a.json {
        print_json(&report)?;
    } else {
        super::print::tiles(&report)?;
    }
    Ok(0)
}

pub(super) fn doctor(a: DoctorArgs, ort_lib: Option<PathBuf>) -> Result<i32> {
    let report = jobs::run_doctor(ort_lib.as_deref());
    let code = if report.healthy() { 0 } else { 1 };
    if a.json {
        print_json(&report)?;
        return Ok(code);
    }
    out!("tessera {}", report.tessera_version)?;
    out!("GDAL {}", report.gdal_version)?;
    for d in &report.drivers {
        out!(
            "  {:<15} {:<4} {}",
            d.name,
            if d.available { "ok" } else { "MISSING" },
            d.purpose
        )?;
    }
    match &report.onnxruntime {
        Ok(rt) => {
            out!("ONNX Runtime {}", rt.version)?;
            out!(
                "  library:   {} (found via {})",
                rt.library.path.display(),
                rt.library.source
            )?;
            out!("  providers: {}", rt.providers.join(", "))?;
        }
        Err(e) => out!("ONNX Runtime: NOT AVAILABLE: {e}")?,
    }
    Ok(code)
}

pub(super) fn bench_read(a: BenchReadArgs) -> Result<i32> {
    let job = BenchReadJob {
        scene: a.scene.clone(),
        grid: a.tiling.grid().map_err(flag_error)?,
        read: a.tiling.read(&a.input, 1, None),
        scaling: a.input.scaling(),
        batch_size: a.tiling.batch_size.unwrap_or(64),
    };
    let report = jobs::run_bench_read(job)?;
    print_json(&report)?;
    Ok(0)
}
