use crate::common::{assert_close, Rng, F32_FWD};
use candle_core::{DType, Device, Tensor, Var};
use kernels::custom_backward;

/// A strided, offset view as the value is surfaced densely with the right contents.
#[test]
fn strided_values_are_copied_correctly() {
    let mut rng = Rng::new(71);
    let x = rng.var(&[3, 2], 1.0, DType::F32);
    let big = rng.tensor(&[4, 5, 3], 1.0, DType::F32);
    let value = big.narrow(0, 1, 2).unwrap().narrow(1, 1, 3).unwrap().transpose(1, 2).unwrap(); // [2, 3, 3]
    assert!(!value.is_contiguous());
    let y = custom_backward::unary("test", &x, value.clone(), |g| g.sum(0)?.narrow(1, 0, 2)).unwrap();
    assert!(y.is_contiguous() && y.track_op());
    assert_close("value", &y, &value.contiguous().unwrap(), F32_FWD);
}

#[test]
fn backward_closure_result_reaches_the_input() {
    let x = Var::new(&[1f32, 2.0, 3.0], &Device::Cpu).unwrap();
    let value = (x.as_tensor() * 2.0).unwrap().detach();
    let y = custom_backward::unary("double", &x, value, |g| g * 2.0).unwrap();
    let grads = (y.sqr().unwrap().sum_all().unwrap()).backward().unwrap();
    // d Σ (2x)² / dx = 8x
    let want = Tensor::new(&[8f32, 16.0, 24.0], &Device::Cpu).unwrap();
    assert_close("dx", grads.get(&x).unwrap(), &want, F32_FWD);
}

#[test]
fn untracked_inputs_return_the_value_itself() {
    let x = Tensor::new(&[1f32, 2.0], &Device::Cpu).unwrap();
    let value = Tensor::new(&[3f32, 4.0], &Device::Cpu).unwrap();
    let y = custom_backward::unary("noop", &x, value.clone(), |g| Ok(g.clone())).unwrap();
    assert!(!y.track_op());
    assert_eq!(y.id(), value.id());
}

/// Gradients for untracked inputs are dropped; dtypes are fixed up to the input's.
#[test]
fn gradients_follow_tracking_and_dtype() {
    let a = Var::new(&[1f32, 2.0], &Device::Cpu).unwrap();
    let a16 = a.to_dtype(DType::BF16).unwrap();
    let b = Tensor::new(&[5f32, 6.0], &Device::Cpu).unwrap();
    let value = Tensor::new(&[0f32, 0.0], &Device::Cpu).unwrap().to_dtype(DType::BF16).unwrap();
    let y = custom_backward::binary("pair", &a16, &b, value, |g| {
        let g = g.to_dtype(DType::F32)?; // deliberately the "wrong" dtype for a16
        Ok([Some((&g * 3.0)?), Some(g)])
    })
    .unwrap();
    let grads = y.to_dtype(DType::F32).unwrap().sum_all().unwrap().backward().unwrap();
    let want = Tensor::new(&[3f32, 3.0], &Device::Cpu).unwrap();
    assert_close("da", grads.get(&a).unwrap(), &want, F32_FWD);
    assert!(grads.get(&b).is_none());
}

#[test]
fn wrong_gradient_shape_is_an_error() {
    let x = Var::new(&[1f32, 2.0], &Device::Cpu).unwrap();
    let value = x.as_tensor().detach();
    let y = custom_backward::unary("bad", &x, value, |g| g.sum_all()).unwrap();
    assert!(y.sum_all().unwrap().backward().is_err());
}
